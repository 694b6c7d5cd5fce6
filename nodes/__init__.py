"""Collect the node classes of every technique module in this folder.

Each node class is declared once with `@conduit_node(display name)` (see `_declare.py`); importing the
modules fills the registry. The classic mappings below are the declarations themselves (tests, bench and eval
call them in-process); the pack's `__init__` registers them with ComfyUI, as V3 nodes or classic ones. A
module that fails to import is logged and skipped, so one broken technique never takes the whole pack down.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil

from ._declare import class_mappings, declared_nodes, display_name_mappings

log = logging.getLogger(__name__)

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    try:
        _mod = importlib.import_module(f".{_info.name}", __name__)
    except Exception:  # noqa: BLE001  (report and keep the other techniques usable)
        log.exception("Conduit: could not load nodes/%s.py; its nodes are unavailable", _info.name)
        continue
    for _cls in getattr(_mod, "NODE_CLASS_MAPPINGS", {}).values():  # modules not yet declared with the decorator
        from ._declare import conduit_node

        conduit_node(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}).get(_cls.__name__, _cls.__name__))(_cls)

NODE_CLASS_MAPPINGS: dict[str, type] = class_mappings()
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = display_name_mappings()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "declared_nodes", "display_name_mappings"]
