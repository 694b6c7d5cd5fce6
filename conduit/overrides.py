"""`--set NODE.INPUT=VALUE`: parse it, check it against the graph and the server's /object_info, apply it.

Every mistake is a UsageError whose one line names what exists instead (the node's class and inputs, the
node(s) that do have that input, the choices of a combo, the range of a number) and what to type.
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import UsageError
from .workflow import DEMO_LOADER, TEST_LOADERS

PRIMITIVE_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN"}


@dataclass(frozen=True)
class Assignment:
    text: str  # as typed, for messages
    node_id: str
    name: str
    raw: str  # the text after '='
    value: Any  # JSON when it parses, else the raw text


def parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _short(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _nodes_with_input(graph: dict, name: str, object_info: dict | None = None) -> list[str]:
    """Node ids whose inputs (in the graph, or in their class on the server) include `name`."""
    found = []
    for nid in _sorted_ids(graph):
        node = graph[nid]
        names = set(node.get("inputs", {}))
        if object_info and node["class_type"] in object_info:
            names |= set(input_specs(object_info[node["class_type"]]))
        if name in names:
            found.append(nid)
    return found


def _sorted_ids(graph: dict) -> list[str]:
    return sorted(graph, key=lambda n: (0, int(n), n) if n.isdigit() else (1, 0, n))


def _where(graph: dict, name: str, raw: str, object_info: dict | None = None, exclude: str | None = None) -> str:
    """'cfg is on node 6 (KSampler) and node 9 (KSampler): type --set 6.cfg=4' (or that no node has it)."""
    ids = [n for n in _nodes_with_input(graph, name, object_info) if n != exclude]
    if not ids:
        return f"no node in this workflow has an input {name!r}"
    listed = " and ".join(f"node {n} ({graph[n]['class_type']})" for n in ids)
    value = raw if raw else _short(graph[ids[0]]["inputs"].get(name, "VALUE"))
    return f"{name} is on {listed}: type --set {ids[0]}.{name}={value}"


def parse_set(text: str, graph: dict) -> Assignment:
    """'6.cfg=4.5' -> Assignment('6', 'cfg', 4.5). Syntax mistakes name the node(s) that have the input."""
    target, eq, raw = text.partition("=")
    node_id, dot, name = target.strip().partition(".")
    node_id, name = node_id.strip(), name.strip()
    if not dot or not node_id or not name:
        wanted = name or node_id
        where = _where(graph, wanted, raw) if wanted else "e.g. --set 6.cfg=4.0"
        raise UsageError(f"--set {text}: name the node too, as NODE.INPUT=VALUE; {where}")
    if not eq:
        inputs = graph.get(node_id, {}).get("inputs", {})
        if name in inputs and not isinstance(inputs[name], list):
            example = f"e.g. --set {node_id}.{name}={_short(inputs[name])} (its value now)"
        elif name in inputs:
            example = f"e.g. --set {node_id}.{name}=VALUE"
        else:
            example = _where(graph, name, "")
        raise UsageError(f"--set {text}: no value; write NODE.INPUT=VALUE; {example}")
    return Assignment(text, node_id, name, raw, parse_value(raw))


def _node_list(graph: dict) -> str:
    return ", ".join(f"{n} {graph[n]['class_type']}" for n in _sorted_ids(graph))


def check_nodes(assignments: list[Assignment], graph: dict, workflow_name: str) -> None:
    """Node ids that are not in the graph (checked before any server is started or asked)."""
    for a in assignments:
        if a.node_id not in graph:
            raise UsageError(f"--set {a.text}: {workflow_name} has no node {a.node_id} (its nodes: "
                             f"{_node_list(graph)}); {_where(graph, a.name, a.raw)}")


def input_specs(class_info: dict) -> dict[str, tuple[Any, dict]]:
    """name -> (kind, options) for a class's required and optional inputs in /object_info."""
    specs: dict[str, tuple[Any, dict]] = {}
    for section in ("required", "optional"):
        for name, spec in (class_info.get("input", {}).get(section) or {}).items():
            if not isinstance(spec, (list, tuple)) or not spec:
                continue
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs[name] = (spec[0], opts)
    return specs


def _range_text(opts: dict) -> str:
    lo, hi = opts.get("min"), opts.get("max")
    if lo is not None and hi is not None:
        return f"between {lo:g} and {hi:g}" if isinstance(lo, float) or isinstance(hi, float) else \
            f"between {lo} and {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}"


def _check_range(a: Assignment, label: str, value: float, opts: dict) -> None:
    lo, hi = opts.get("min"), opts.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise UsageError(f"--set {a.text}: {label} must be {_range_text(opts)}, not {a.raw}")


def coerce(a: Assignment, class_type: str, kind: Any, opts: dict, graph: dict) -> Any:
    """The value ComfyUI should get for this input, or a UsageError saying what the input takes."""
    label = f"{class_type}.{a.name} (node {a.node_id})"
    v = a.value
    if isinstance(kind, (list, tuple)) or kind == "COMBO":
        choices = list(kind) if isinstance(kind, (list, tuple)) else list(opts.get("options") or [])
        if v in choices:
            return v
        if a.raw in choices:  # a choice that happens to look like JSON, e.g. "1.5"
            return a.raw
        texts = [str(c) for c in choices]
        close = difflib.get_close_matches(str(v), texts, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        shown = ", ".join(texts) if texts else "(none on this server)"
        raise UsageError(f"--set {a.text}: {a.raw!r} is not a choice of {label}{hint}; choices: {shown}")
    if kind == "INT":
        ok = isinstance(v, int) and not isinstance(v, bool)
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():
            v, ok = int(v), True
        if not ok:
            example = opts.get("default", 1)
            raise UsageError(f"--set {a.text}: {label} takes a whole number, not {a.raw!r}; "
                             f"e.g. --set {a.node_id}.{a.name}={example}")
        _check_range(a, label, v, opts)
        return v
    if kind == "FLOAT":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            example = opts.get("default", 1.0)
            raise UsageError(f"--set {a.text}: {label} takes a number, not {a.raw!r}; "
                             f"e.g. --set {a.node_id}.{a.name}={example}")
        if not math.isfinite(v):
            raise UsageError(f"--set {a.text}: {label} takes a finite number, not {a.raw}"
                             + (f"; it must be {_range_text(opts)}" if "min" in opts or "max" in opts else ""))
        _check_range(a, label, v, opts)
        return float(v)
    if kind == "BOOLEAN":
        if not isinstance(v, bool):
            raise UsageError(f"--set {a.text}: {label} is true or false, not {a.raw!r}; "
                             f"e.g. --set {a.node_id}.{a.name}=true")
        return v
    if kind == "STRING":
        return v if isinstance(v, str) else a.raw  # --set 2.text=42 means the text "42"
    # a connection (MODEL, LATENT, ...): only another node's output fits
    if (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] in graph
            and isinstance(v[1], int) and not isinstance(v[1], bool)):
        return v
    raise UsageError(f"--set {a.text}: {label} is a {kind} connection, not a value; to rewire it give another "
                     f"node's output, e.g. --set '{a.node_id}.{a.name}=[\"NODE\", 0]'")


def _replaced_note(class_type: str) -> str:
    if class_type == DEMO_LOADER:
        return " (--model embedded put the demo model here; add --model keep to use the workflow's own loader)"
    if class_type in TEST_LOADERS.values():
        return " (--model tiny-* put a test loader here; add --model keep to use the workflow's own loader)"
    return ""


def validate(assignments: list[Assignment], graph: dict, object_info: dict, server: str = "") -> list[Any]:
    """Check every assignment against the server's node classes; returns the values to apply, in order."""
    values = []
    at = f" on {server}" if server else ""
    for a in assignments:
        node = graph[a.node_id]
        class_type = node["class_type"]
        if class_type not in object_info:
            raise UsageError(f"--set {a.text}: node {a.node_id} is {class_type}, which the server{at} does not "
                             "have; install that node pack there, or drop this --set")
        specs = input_specs(object_info[class_type])
        if a.name not in specs:
            names = ", ".join(specs) if specs else "none"
            where = _where(graph, a.name, a.raw, object_info, exclude=a.node_id)
            close = difflib.get_close_matches(a.name, list(specs), n=1)
            if close and where.startswith("no node"):
                where += f"; did you mean --set {a.node_id}.{close[0]}={a.raw}?"
            raise UsageError(f"--set {a.text}: node {a.node_id} is {class_type} (inputs: {names})"
                             f"{_replaced_note(class_type)}; {where}")
        kind, opts = specs[a.name]
        try:
            values.append(coerce(a, class_type, kind, opts, graph))
        except UsageError as exc:
            if not at:
                raise
            raise UsageError(f"{exc} (checked{at})") from None
    return values


def apply(assignments: list[Assignment], values: list[Any], graph: dict) -> dict:
    for a, value in zip(assignments, values):
        graph[a.node_id]["inputs"][a.name] = value
    return graph
