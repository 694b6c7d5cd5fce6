"""Conduit: send each condition only to the layers, timesteps and regions where it belongs.

Each node is declared once (nodes/). ComfyUI's loader reads NODE_CLASS_MAPPINGS when a pack has it and then
never calls comfy_entrypoint, so the pack exports exactly one of the two: V3 nodes through comfy_entrypoint()
on hosts with comfy_api.latest, the classic mappings on older hosts (the pinned 2024 host).
"""
from .nodes import declared_nodes, display_name_mappings
from .patches.engine.host import v3_node_api

WEB_DIRECTORY = "./web"  # the per-node help pages (web/docs/<NodeId>.md) and the editor extension
_V3 = v3_node_api()

if _V3 is not None:
    NODE_API = "v3"

    async def comfy_entrypoint():
        from .nodes._v3 import v3_extension

        return v3_extension(_V3, declared_nodes())

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
else:
    NODE_API = "classic"
    NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in declared_nodes()}
    NODE_DISPLAY_NAME_MAPPINGS = display_name_mappings()
    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
