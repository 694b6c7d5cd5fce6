"""Node declarations: each node's id, display name and category are written once, on its class.

`@conduit_node("Conduit Balanced Style")` on a node class registers it under its class name (the node id that
saved workflows use), keeps the display name beside it, and puts the one input guard in front of its
function, so no node can skip the guard. `nodes/__init__.py` builds ComfyUI's mappings from the registry.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from ._guard import check_inputs

T = TypeVar("T", bound=type)

REGISTRY: dict[str, type] = {}  # node id -> class, in declaration order


def conduit_node(display_name: str) -> Callable[[T], T]:
    def declare(cls: T) -> T:
        node_id = cls.__name__
        if node_id in REGISTRY and REGISTRY[node_id] is not cls:
            raise RuntimeError(f"two Conduit nodes declare the id {node_id}")
        if not getattr(cls, "CATEGORY", "").startswith("conduit"):
            raise RuntimeError(f"{node_id}: a Conduit node needs a CATEGORY under 'conduit/'")
        cls.DISPLAY_NAME = display_name
        function = getattr(cls, cls.FUNCTION)
        if not getattr(function, "_conduit_guarded", False):
            @functools.wraps(function)
            def guarded(self, *args, **kwargs):
                check_inputs(cls, display_name, kwargs)
                return function(self, *args, **kwargs)

            guarded._conduit_guarded = True
            setattr(cls, cls.FUNCTION, guarded)
        REGISTRY[node_id] = cls
        return cls

    return declare


def declared_nodes() -> list[type]:
    """Every declared node class, in declaration order."""
    return list(REGISTRY.values())


def class_mappings() -> dict[str, type]:
    return dict(REGISTRY)


def display_name_mappings() -> dict[str, str]:
    return {node_id: cls.DISPLAY_NAME for node_id, cls in REGISTRY.items()}
