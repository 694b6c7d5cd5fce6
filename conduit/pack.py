"""Register the node pack (the repository root) as the package `conduit_pack`, the way ComfyUI's loader
imports a custom node folder, so tests, bench and eval import it with ordinary imports:

    import conduit_pack.patches.seg.guidance as seg

Importing `conduit` registers a bare package shell once: pure modules (the `*_math` ones) then import without
ComfyUI. `import_pack()` runs the pack's `__init__` in that same module object when a host is loaded, so every
submodule keeps one name and one identity.
"""
from __future__ import annotations

import importlib.util
import sys
import types

from .host import REPO_ROOT

PACK_NAME = "conduit_pack"


def register_shell() -> types.ModuleType:
    mod = sys.modules.get(PACK_NAME)
    if mod is None:
        spec = importlib.util.spec_from_file_location(PACK_NAME, REPO_ROOT / "__init__.py",
                                                      submodule_search_locations=[str(REPO_ROOT)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = mod
    return mod


def import_pack(run_init: bool = True) -> types.ModuleType:
    """The pack package; with run_init, its __init__ (the node mappings, which need ComfyUI) has run too."""
    mod = register_shell()
    if run_init and getattr(mod, "NODE_API", None) is None:
        mod.__spec__.loader.exec_module(mod)
    return mod


register_shell()
