"""Collect the node classes of every technique module in this folder.

Each module exports NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS. A module that fails to import is
logged and skipped, so one broken technique never takes the whole pack down.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil

log = logging.getLogger(__name__)

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    try:
        _mod = importlib.import_module(f".{_info.name}", __name__)
    except Exception:  # noqa: BLE001  (report and keep the other techniques usable)
        log.exception("Conduit: could not load nodes/%s.py; its nodes are unavailable", _info.name)
        continue
    NODE_CLASS_MAPPINGS.update(getattr(_mod, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))
