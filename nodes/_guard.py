"""The one input guard: every Conduit node refuses bad inputs before doing any work.

ComfyUI's own validation compares numbers with their declared min and max, but JSON from the API can carry
NaN and infinity, which pass those comparisons (every comparison with NaN is false), and in-process callers
skip validation altogether. So before a node runs, each declared input is checked against its declaration:
numbers must be finite and inside [min, max], choices must be among the listed ones, booleans must be
booleans. The error names the node, the input and the fix.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..patches.engine.errors import ConduitError

NUMBER_TYPES = ("FLOAT", "INT")


def declared_inputs(cls: type) -> dict[str, tuple]:
    """name -> (type, options) for the required and optional inputs of a classic node declaration."""
    spec = cls.INPUT_TYPES()
    out: dict[str, tuple] = {}
    for section in ("required", "optional"):
        for name, decl in (spec.get(section) or {}).items():
            kind = decl[0]
            options = decl[1] if len(decl) > 1 and isinstance(decl[1], Mapping) else {}
            out[name] = (kind, options)
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _range_text(options: Mapping) -> str:
    lo, hi = options.get("min"), options.get("max")
    if lo is not None and hi is not None:
        return f"a number from {lo} to {hi}"
    if lo is not None:
        return f"a number of at least {lo}"
    if hi is not None:
        return f"a number of at most {hi}"
    return "a finite number"


def _fix(name: str, what: str, options: Mapping) -> str:
    default = options.get("default")
    tail = f" (default {default})" if default is not None else ""
    return f"set {name} to {what}{tail}."


def check_number(node: str, name: str, kind: str, value: Any, options: Mapping) -> None:
    what = _range_text(options)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConduitError(node, f"input '{name}' is {_show(value)}, not a number.", _fix(name, what, options))
    if not math.isfinite(value):
        raise ConduitError(node, f"input '{name}' is {value}; NaN and infinity are not allowed.",
                           _fix(name, what, options))
    if kind == "INT" and isinstance(value, float) and not value.is_integer():
        raise ConduitError(node, f"input '{name}' is {value}, not a whole number.", _fix(name, what, options))
    lo, hi = options.get("min"), options.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConduitError(node, f"input '{name}' is {value}, outside its range.", _fix(name, what, options))


def check_inputs(cls: type, node: str, values: Mapping[str, Any]) -> None:
    for name, (kind, options) in declared_inputs(cls).items():
        if name not in values or values[name] is None:
            continue
        value = values[name]
        if isinstance(kind, (list, tuple)):
            if kind and value not in kind:
                choices = ", ".join(map(str, kind[:12])) + (", ..." if len(kind) > 12 else "")
                raise ConduitError(node, f"input '{name}' is {_show(value)}, which is not one of its choices.",
                                   f"pick one of: {choices}.")
        elif kind in NUMBER_TYPES:
            check_number(node, name, kind, value, options)
        elif kind == "BOOLEAN" and not isinstance(value, bool):
            raise ConduitError(node, f"input '{name}' is {_show(value)}, not true or false.",
                               f"set {name} to true or false.")
