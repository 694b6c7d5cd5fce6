"""Sensitivity tables for nodes: shipped tables, lookup by family, and validation against a loaded model.

The data type, JSON parsing and ranking live in tables_math (no comfy imports); this module adds what
needs the pack's files or a ModelPatcher. Injection nodes typically do:

    table = table_for_family(model_family(model, NODE), "style_qk", NODE)   # or a SENSITIVITY_TABLE input
    validate_against(table, model, NODE)
    keys = table.top_layers("q", timestep, lambda_s)
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

from .errors import ConduitError
from .tables_math import (  # noqa: F401  (re-exported: the table API lives here for node code)
    ANALYSIS_NODE, DIMENSIONS, FEATURES, FIX_REGENERATE, SCHEMA_ID, TABLE_VERSION, LayerKey, SensitivityTable,
    comfy_order, diffusers_attn1_key, key_short, load_table, parse_table, save_table, summary,
)

SOCKET = "SENSITIVITY_TABLE"  # ComfyUI socket type carrying a SensitivityTable between nodes
TABLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sensitivity_tables")
KINDS = ("style_qk", "style_qkv")


def builtin_names() -> list[str]:
    """Names of the shipped tables (file stems in sensitivity_tables/), e.g. 'sdxl_style_qk'."""
    if not os.path.isdir(TABLE_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(TABLE_DIR) if f.endswith(".json") and not f.startswith("schema"))


@lru_cache(maxsize=None)
def _builtin_json(name: str) -> str:
    with open(os.path.join(TABLE_DIR, f"{name}.json"), encoding="utf-8") as fh:
        return fh.read()


def builtin_table(name: str, node: str = ANALYSIS_NODE) -> SensitivityTable:
    """A fresh copy of a shipped table (callers may modify it)."""
    if name not in builtin_names():
        raise ConduitError(node, f"no shipped sensitivity table named {name!r}.",
                           f"use one of {', '.join(builtin_names()) or '(none found)'}, or " + FIX_REGENERATE)
    return parse_table(json.loads(_builtin_json(name)), node)


def table_for_family(family: str, kind: str = "style_qk", node: str = ANALYSIS_NODE) -> SensitivityTable:
    """The shipped table of this kind for a model family; a ConduitError pointing at the analysis node if none."""
    if kind not in KINDS:
        raise ConduitError(node, f"unknown table kind {kind!r}.", f"use one of {', '.join(KINDS)}.")
    name = f"{family}_{kind}"
    if name not in builtin_names():
        have = ", ".join(n for n in builtin_names() if n.endswith(kind)) or "none"
        raise ConduitError(
            node, f"no shipped {kind} sensitivity table for model family {family!r} (shipped: {have}).",
            f"run the {ANALYSIS_NODE} node (or `python -m conduit analyze`) on this model and connect its "
            "SENSITIVITY_TABLE output, or load the table file it writes.")
    return builtin_table(name, node)


def resolve_table(source: Any, node: str = ANALYSIS_NODE) -> SensitivityTable:
    """Accept what a node input may carry: a SensitivityTable, a shipped table name, a path or a dict."""
    if isinstance(source, SensitivityTable):
        return source
    if isinstance(source, str) and source in builtin_names():
        return builtin_table(source, node)
    return load_table(source, node)


def validate_against(table: SensitivityTable, model_patcher: Any, node: str = ANALYSIS_NODE) -> dict[LayerKey, int]:
    """Check the table was made for this model; returns {layer key: table column}.

    The family and the exact set of self-attention keys must match: a table for a different UNet
    (another family, or a pruned/tiny model with other layers) would select the wrong layers silently.
    """
    from .layers import FAMILY_NAMES, attention_layers, model_family

    family = model_family(model_patcher, node)
    fix = (f"use a table made for this model: run the {ANALYSIS_NODE} node on it and connect its "
           "SENSITIVITY_TABLE output, or pick the shipped table for its family.")
    if table.family != family:
        raise ConduitError(node, f"the sensitivity table is for model family {table.family!r} but the model is "
                           f"{FAMILY_NAMES.get(family, family)} ({family!r}).", fix)
    model_keys = [layer.key for layer in attention_layers(model_patcher, node)]
    if set(model_keys) != set(table.layer_keys):
        missing = [key_short(k) for k in model_keys if k not in set(table.layer_keys)]
        extra = [key_short(k) for k in table.layer_keys if k not in set(model_keys)]
        detail = f"the table has {table.num_layers} layers, the model has {len(model_keys)} self-attention layers"
        if missing:
            detail += f"; not in the table: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
        if extra:
            detail += f"; not in the model: {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}"
        raise ConduitError(node, f"the sensitivity table does not match this model's layers ({detail}).", fix)
    return {k: i for i, k in enumerate(table.layer_keys)}
