"""V3 nodes (ComfyUI's `comfy_api` schema) built from the one declaration of each node.

A Conduit node is declared once, as a class under `@conduit_node` (its INPUT_TYPES, RETURN_TYPES,
RETURN_NAMES, OUTPUT_TOOLTIPS, DESCRIPTION, CATEGORY, OUTPUT_NODE and function). On a host with
`comfy_api.latest` the pack registers, for each declaration, an `io.ComfyNode` whose schema is translated from
it and whose `execute` calls the declared (guarded) function. The translation keeps what the editor and saved
workflows see: ComfyUI serves a V3 node's inputs in the classic /object_info form, and a host test checks
that this form equals the classic declaration input by input, option by option. Options the V3 constructors
do not name travel in the input's extra dict, so nothing is dropped.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# classic option name -> V3 constructor argument, per widget type; other options go to extra_dict as they are
_WIDGET_ARGS = {
    "FLOAT": {"default": "default", "min": "min", "max": "max", "step": "step", "round": "round",
              "forceInput": "force_input"},
    "INT": {"default": "default", "min": "min", "max": "max", "step": "step",
            "control_after_generate": "control_after_generate", "forceInput": "force_input"},
    "STRING": {"default": "default", "multiline": "multiline", "placeholder": "placeholder",
               "dynamicPrompts": "dynamic_prompts", "forceInput": "force_input"},
    "BOOLEAN": {"default": "default", "label_on": "label_on", "label_off": "label_off",
                "forceInput": "force_input"},
    "COMBO": {"default": "default", "control_after_generate": "control_after_generate"},
}
_WIDGET_CLASSES = {"FLOAT": "Float", "INT": "Int", "STRING": "String", "BOOLEAN": "Boolean", "COMBO": "Combo"}


def _split(kind: str, options: Mapping) -> tuple[dict, dict]:
    """(V3 constructor kwargs, extra options) for one classic input's options."""
    names = _WIDGET_ARGS.get(kind, {})
    kwargs, extra = {}, {}
    for key, value in options.items():
        if key == "tooltip":
            kwargs["tooltip"] = value
        elif key in names:
            kwargs[names[key]] = value
        else:
            extra[key] = value
    return kwargs, extra


def _socket_type(io: Any, kind: str, cache: dict) -> Any:
    if kind not in cache:
        cache[kind] = io.Custom(kind)
    return cache[kind]


def v3_input(io: Any, name: str, kind: Any, options: Mapping, optional: bool, cache: dict) -> Any:
    if isinstance(kind, (list, tuple)):
        kwargs, extra = _split("COMBO", options)
        made = io.Combo.Input(name, options=list(kind), optional=optional, **kwargs)
    elif kind in _WIDGET_CLASSES:
        kwargs, extra = _split(kind, options)
        made = getattr(io, _WIDGET_CLASSES[kind]).Input(name, optional=optional, **kwargs)
        if kind == "STRING" and "multiline" not in options:
            made.multiline = None  # V3 writes multiline=False when unset; serve the classic declaration as it is
    else:
        kwargs, extra = _split("", options)
        made = _socket_type(io, kind, cache).Input(name, optional=optional, **kwargs)
    made.extra_dict.update(extra)
    return made


def v3_inputs(io: Any, decl: type, cache: dict) -> list:
    spec = decl.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, entry in (spec.get(section) or {}).items():
            options = entry[1] if len(entry) > 1 and isinstance(entry[1], Mapping) else {}
            out.append(v3_input(io, name, entry[0], options, section == "optional", cache))
    return out


def v3_outputs(io: Any, decl: type, cache: dict) -> list:
    types = tuple(decl.RETURN_TYPES)
    names = tuple(getattr(decl, "RETURN_NAMES", None) or types)
    tips = tuple(getattr(decl, "OUTPUT_TOOLTIPS", None) or (None,) * len(types))
    # no output ids: V3 wants ids unique across inputs and outputs, and Conduit's MODEL -> MODEL nodes name both
    # "model"; ComfyUI then numbers the outputs, and the names shown stay the declared ones
    return [_socket_type(io, kind, cache).Output(display_name=name, tooltip=tip)
            for kind, name, tip in zip(types, names, tips)]


def node_output(io: Any, result: Any) -> Any:
    """A classic return value (a tuple, or {"ui": ..., "result": ...}) as a V3 NodeOutput with the same UI
    payload (the text a node shows is the `text` list, as V3's PreviewText sends it)."""
    if isinstance(result, Mapping):
        return io.NodeOutput(*tuple(result.get("result") or ()), ui=result.get("ui"))
    return io.NodeOutput(*tuple(result))


def v3_node(io: Any, decl: type) -> type:
    """The io.ComfyNode for one declared node: same id, display name, category, inputs and outputs."""
    cache: dict = {}

    def define_schema(cls) -> Any:
        return io.Schema(node_id=decl.__name__, display_name=decl.DISPLAY_NAME, category=decl.CATEGORY,
                         description=getattr(decl, "DESCRIPTION", ""), inputs=v3_inputs(io, decl, cache),
                         outputs=v3_outputs(io, decl, cache), is_output_node=bool(getattr(decl, "OUTPUT_NODE", False)))

    def execute(cls, **kwargs: Any) -> Any:
        # a fresh declared node per call (V3 keeps no state on classes); its function runs behind the input guard
        return node_output(io, getattr(decl(), decl.FUNCTION)(**kwargs))

    return type(decl.__name__, (io.ComfyNode,), {
        "__module__": decl.__module__, "__doc__": decl.__doc__, "DECLARATION": decl,
        "define_schema": classmethod(define_schema), "execute": classmethod(execute)})


def v3_extension(latest: Any, declarations: list[type]) -> Any:
    """The ComfyExtension that `comfy_entrypoint()` returns: one V3 node per declaration, in declaration order."""
    nodes = [v3_node(latest.io, decl) for decl in declarations]

    class ConduitExtension(latest.ComfyExtension):
        async def get_node_list(self) -> list:
            return list(nodes)

    return ConduitExtension()
