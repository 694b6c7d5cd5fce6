"""Import the node pack (the repository root) as a package, the way ComfyUI's loader does."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from .host import REPO_ROOT

PACK_NAME = "conduit_pack"


def import_pack(run_init: bool = True) -> types.ModuleType:
    """With run_init=False only the package shell is registered, so pure modules import without ComfyUI."""
    mod = sys.modules.get(PACK_NAME)
    if mod is not None and (not run_init or getattr(mod, "NODE_CLASS_MAPPINGS", None) is not None):
        return mod
    if not run_init:
        mod = types.ModuleType(PACK_NAME)
        mod.__path__ = [str(REPO_ROOT)]
        mod.__file__ = str(REPO_ROOT / "__init__.py")
        sys.modules[PACK_NAME] = mod
        return mod
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = mod
    spec.loader.exec_module(mod)
    return mod


def pack_module(name: str) -> types.ModuleType:
    """e.g. pack_module('patches.grid')."""
    import_pack(run_init=False)
    return importlib.import_module(f"{PACK_NAME}.{name}")
