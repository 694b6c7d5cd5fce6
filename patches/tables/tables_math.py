"""Sensitivity tables: the data type, its JSON form and its validation (pure torch, no comfy).

A table holds, for one model family, a score per (timestep, layer) for each attention feature
(q, k, v). Lower scores mean a layer reacts more to the analysed dimension (style or structure), so
the most sensitive layers are the first ones in ascending score order, as in Conditional Balance.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine.errors import ConduitError
from ..engine.safe_files import MAX_TABLE_BYTES, read_json

SCHEMA_ID = "conduit.sensitivity_table"
TABLE_VERSION = 1
DIMENSIONS = ("style", "structure")
DIRECTIONS = ("lower_is_more_sensitive",)
FEATURES = ("q", "k", "v")
# UNet self-attention keys use ComfyUI's block names; DiT blocks use its "double_block" (SD3 joint, Flux double)
# and "single_block" (Flux single) patch names.
BLOCK_NAMES = ("input", "middle", "output", "double_block", "single_block")
ANALYSIS_NODE = "Conduit Sensitivity Analysis"
FIX_REGENERATE = (f"re-create the table with the {ANALYSIS_NODE} node (or `python -m conduit analyze`), "
                  "or pick one of the tables shipped in sensitivity_tables/.")

LayerKey = tuple[str, int, int]


@dataclass
class SensitivityTable:
    family: str
    dimension: str
    layer_keys: list[LayerKey]
    timesteps: list[int]
    scores: dict[str, torch.Tensor]  # feature -> [T, L] float64
    source_names: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    direction: str = "lower_is_more_sensitive"
    version: int = TABLE_VERSION

    @property
    def num_layers(self) -> int:
        return len(self.layer_keys)

    @property
    def features(self) -> list[str]:
        return [f for f in FEATURES if f in self.scores]

    def row_for(self, timestep: float) -> int:
        """Row of the stored timestep nearest to timestep (CB's approximate-timestep lookup)."""
        best, best_d = 0, math.inf
        for i, t in enumerate(self.timesteps):
            d = abs(float(t) - float(timestep))
            if d < best_d:
                best, best_d = i, d
        return best

    def count_for(self, fraction: float) -> int:
        """CB's lambda rule: 0 < lambda <= 1 is a fraction of the layers (int(lambda·L)), lambda > 1 a layer count."""
        if not math.isfinite(fraction):
            raise ValueError(f"lambda must be a finite number, got {fraction!r}")
        if fraction <= 0:
            return 0
        if fraction <= 1:
            return int(fraction * self.num_layers)
        return min(int(fraction), self.num_layers)

    def ranking(self, feature: str, timestep: float) -> list[int]:
        """Layer columns from most to least sensitive at the row nearest to timestep."""
        row = self.scores[feature][self.row_for(timestep)]
        return [int(i) for i in torch.sort(row, stable=True).indices]

    def top_layers(self, feature: str, timestep: float, fraction: float) -> list[LayerKey]:
        """The count_for(fraction) most sensitive layer keys (ascending score) at this timestep."""
        if feature not in self.scores:
            raise KeyError(f"table has no {feature!r} scores (it has {', '.join(self.features)})")
        return [self.layer_keys[i] for i in self.ranking(feature, timestep)[: self.count_for(fraction)]]

    def timestep_ranking(self, feature: str) -> list[int]:
        """Timesteps from most to least sensitive, by the mean score over layers (structure gating)."""
        means = self.scores[feature].mean(dim=1)
        return [int(self.timesteps[i]) for i in torch.sort(means, stable=True).indices]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_ID,
            "version": self.version,
            "family": self.family,
            "dimension": self.dimension,
            "direction": self.direction,
            "layer_keys": [[b, int(i), int(j)] for b, i, j in self.layer_keys],
            "source_names": list(self.source_names),
            "timesteps": [int(t) for t in self.timesteps],
            "scores": {f: [[float(x) for x in row] for row in self.scores[f].tolist()] for f in self.features},
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], node: str = ANALYSIS_NODE) -> "SensitivityTable":
        return parse_table(data, node)


def _bad(node: str, problem: str) -> ConduitError:
    return ConduitError(node, f"sensitivity table is invalid: {problem}.", FIX_REGENERATE)


def _r(value: Any, limit: int = 60) -> str:
    """repr of a value from a file, cut short (a hostile file must not blow up the error message)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool))


def _finite(x: Any) -> bool:
    """A number that is a finite float64 (an int too large for a float64 is not)."""
    try:
        return _is_number(x) and math.isfinite(x)
    except OverflowError:
        return False


def parse_table(data: Any, node: str = ANALYSIS_NODE) -> SensitivityTable:
    """Check every field of a decoded table file and build the table; ConduitError on any defect."""
    if not isinstance(data, Mapping):
        raise _bad(node, f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA_ID:
        raise _bad(node, f"'schema' must be {SCHEMA_ID!r}, got {_r(data.get('schema'))}")
    required = ("version", "family", "dimension", "direction", "layer_keys", "timesteps", "scores")
    missing = [k for k in required if k not in data]
    if missing:
        raise _bad(node, f"missing field(s) {', '.join(missing)}")
    version = data["version"]
    if not _is_int(version) or version < 1 or version > TABLE_VERSION:
        raise _bad(node, f"version {_r(version)} is not supported (this Conduit reads versions 1..{TABLE_VERSION})")
    family = data["family"]
    if not isinstance(family, str) or not family:
        raise _bad(node, "'family' must be a non-empty string")
    if data["dimension"] not in DIMENSIONS:
        raise _bad(node, f"'dimension' must be one of {DIMENSIONS}, got {_r(data['dimension'])}")
    if data["direction"] not in DIRECTIONS:
        raise _bad(node, f"'direction' must be one of {DIRECTIONS}, got {_r(data['direction'])}")

    raw_keys = data["layer_keys"]
    if not isinstance(raw_keys, list) or not raw_keys:
        raise _bad(node, "'layer_keys' must be a non-empty list")
    keys: list[LayerKey] = []
    for i, k in enumerate(raw_keys):
        if (not isinstance(k, list) or len(k) != 3 or k[0] not in BLOCK_NAMES
                or not _is_int(k[1]) or not _is_int(k[2]) or k[1] < 0 or k[2] < 0):
            raise _bad(node, f"layer_keys[{i}] = {_r(k)} is not [block, id, index] with block in {BLOCK_NAMES}")
        keys.append((k[0], k[1], k[2]))
    if len(set(keys)) != len(keys):
        raise _bad(node, "'layer_keys' has duplicates")
    n_layers = len(keys)

    names = data.get("source_names", [])
    if not isinstance(names, list) or any(not isinstance(n, str) for n in names):
        raise _bad(node, "'source_names' must be a list of strings")
    if names and len(names) != n_layers:
        raise _bad(node, f"'source_names' has {len(names)} entries for {n_layers} layers")

    timesteps = data["timesteps"]
    if (not isinstance(timesteps, list) or not timesteps
            or any(not _is_int(t) or not -2 ** 63 <= t < 2 ** 63 for t in timesteps)):
        raise _bad(node, "'timesteps' must be a non-empty list of integers (64-bit)")
    if len(set(timesteps)) != len(timesteps):
        raise _bad(node, "'timesteps' has duplicates")

    raw_scores = data["scores"]
    if not isinstance(raw_scores, Mapping) or not raw_scores:
        raise _bad(node, "'scores' must be a non-empty object of features")
    scores: dict[str, torch.Tensor] = {}
    for feature, rows in raw_scores.items():
        if feature not in FEATURES:
            raise _bad(node, f"unknown feature {_r(feature)} in 'scores' (expected {FEATURES})")
        if not isinstance(rows, list) or len(rows) != len(timesteps):
            got = len(rows) if isinstance(rows, list) else type(rows).__name__
            raise _bad(node, f"scores[{feature!r}] has {got} rows for {len(timesteps)} timesteps")
        for r, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != n_layers:
                got = len(row) if isinstance(row, list) else type(row).__name__
                raise _bad(node, f"scores[{feature!r}][{r}] has {got} values for {n_layers} layers")
            if not all(_finite(x) for x in row):
                raise _bad(node, f"scores[{feature!r}][{r}] holds a non-finite or non-numeric value")
        scores[feature] = torch.tensor(rows, dtype=torch.float64)

    provenance = data.get("provenance", {})
    if not isinstance(provenance, Mapping):
        raise _bad(node, "'provenance' must be an object")
    return SensitivityTable(family=family, dimension=data["dimension"], layer_keys=keys,
                            timesteps=list(timesteps), scores=scores, source_names=list(names),
                            provenance=dict(provenance), direction=data["direction"], version=version)


def load_table(source: str | os.PathLike | Mapping[str, Any], node: str = ANALYSIS_NODE) -> SensitivityTable:
    """A table from a JSON file path or an already-decoded dict.

    The path is read as it is given (the command line and Python callers choose their own files); nodes never
    pass user paths here, they resolve table names inside the allowed folders first (patches/tables.py). The
    file must be a regular file of at most MAX_TABLE_BYTES, with the JSON depth and number limits of
    safe_files; every failure is a ConduitError."""
    if isinstance(source, Mapping):
        return parse_table(source, node)
    fix = "pick a table file written by the analysis node, or " + FIX_REGENERATE
    data = read_json(source, node, "sensitivity table file", fix, max_bytes=MAX_TABLE_BYTES)
    return parse_table(data, node)


def save_table(table: SensitivityTable, path: str | os.PathLike) -> None:
    """Write the table as JSON; floats keep full float64 precision (repr round-trips)."""
    data = table.to_json()
    parse_table(data)  # never write a file the loader would refuse
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(dumps_table(data))
    os.replace(tmp, path)


def dumps_table(data: Mapping[str, Any]) -> str:
    """JSON text with one line per field, per layer key and per score row (diff- and review-friendly)."""
    def one(x: Any) -> str:
        return json.dumps(x, allow_nan=False, ensure_ascii=False)

    def rows(items: Sequence[Any], indent: str) -> str:
        return "[\n" + ",\n".join(indent + one(x) for x in items) + "\n" + indent[:-1] + "]"

    parts = []
    for name, value in data.items():
        if name in ("layer_keys", "source_names", "timesteps") and value:
            text = rows(value, "  ") if name != "timesteps" else one(value)
        elif name == "scores":
            text = "{\n" + ",\n".join(f"  {one(f)}: {rows(r, '   ')}" for f, r in value.items()) + "\n }"
        elif name == "provenance" and value:
            text = "{\n" + ",\n".join(f"  {one(k)}: {one(v)}" for k, v in value.items()) + "\n }"
        else:
            text = one(value)
        parts.append(f" {one(name)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def key_short(key: Sequence) -> str:
    """Compact label used in layer lists and heatmaps: i4.1, m0.3, o2.0 (UNets), d12, s3 (DiT blocks), the
    names the layer grammar reads."""
    block, block_id, index = key
    if block in ("double_block", "single_block"):
        return f"{block[0]}{block_id}"
    return f"{block[0]}{block_id}.{index}"


def diffusers_attn1_key(name: str, layers_per_block: int = 2) -> LayerKey:
    """ComfyUI (block, id, index) of a diffusers UNet self-attention processor name.

    diffusers names `<down_blocks.b|up_blocks.b|mid_block>.attentions.a.transformer_blocks.j.attn1...`.
    ComfyUI counts conv_in as input 0, then layers_per_block res/attention pairs and one downsample per
    level, so down attention a of level b is input 1 + b·(n+1) + a; up levels have n+1 blocks, so up
    attention a of level b is output b·(n+1) + a; the mid block is ("middle", 0) at runtime.
    SD3.5 joint blocks `transformer_blocks.i.attn` map to ("double_block", i, 0).
    """
    parts = name.split(".")
    try:
        if parts[0] == "transformer_blocks" and parts[2] == "attn":
            return ("double_block", int(parts[1]), 0)
        if parts[0] == "mid_block":
            a, j = int(parts[2]), int(parts[4])
            if a != 0 or parts[1] != "attentions" or parts[3] != "transformer_blocks":
                raise ValueError
            return ("middle", 0, j)
        level, a, j = int(parts[1]), int(parts[3]), int(parts[5])
        if parts[2] != "attentions" or parts[4] != "transformer_blocks" or parts[6] != "attn1":
            raise ValueError
        n = layers_per_block
        if parts[0] == "down_blocks":
            return ("input", 1 + level * (n + 1) + a, j)
        if parts[0] == "up_blocks":
            return ("output", level * (n + 1) + a, j)
    except (IndexError, ValueError):
        pass
    raise ValueError(f"not a diffusers self-attention layer name: {name!r}")


def comfy_order(keys: Sequence[LayerKey]) -> list[int]:
    """Column permutation that puts keys in UNet forward order: input, middle, output (then joint blocks)."""
    rank = {b: i for i, b in enumerate(BLOCK_NAMES)}
    return sorted(range(len(keys)), key=lambda c: (rank[keys[c][0]], keys[c][1], keys[c][2]))


LAMBDA_MAX = 200.0  # the largest lambda_S the nodes accept (above 1 it is a layer count)


def check_lambda(value: Any, node: str, name: str = "lambda_s", maximum: float = LAMBDA_MAX,
                 example: float = 0.43) -> float:
    """value as a float when it is a finite number in [0, maximum]; else a ConduitError naming the input.

    ComfyUI's min/max check lets NaN through (every comparison with NaN is false), so nodes check again."""
    ok = _is_number(value) and _finite(value) and 0 <= value <= maximum
    if not ok:
        what = "a fraction of the layers up to 1, a layer count above 1" if maximum > 1 else "a fraction"
        raise ConduitError(node, f"{name} must be a finite number from 0 to {maximum:g} ({what}), got {_r(value)}.",
                           f"set {name} to e.g. {example:g}.")
    return float(value)


def short_text(text: str, limit: int = 40) -> str:
    """text cut to limit characters (table names and labels shown in summaries and heatmaps)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cut_counts(scores: torch.Tensor, count: int) -> torch.Tensor:
    """[L] int: in how many rows of scores [T, L] each column is among the count lowest (stable ties). One sort
    of all rows at once: O(T·L·log L), linear in the table size for a fixed layer count."""
    n_layers = scores.shape[1]
    if count <= 0:
        return torch.zeros(n_layers, dtype=torch.long)
    idx = torch.sort(scores, dim=1, stable=True).indices[:, :count]
    return torch.bincount(idx.reshape(-1), minlength=n_layers)


def summary(table: SensitivityTable, lambda_s: float = 0.43) -> str:
    """Human-readable digest: shape, the layers most often inside the lambda_S cut, and the timestep ranking.

    Linear in the table size (one batched sort per feature; no per-timestep lookups)."""
    n = table.count_for(lambda_s)
    n_steps = len(table.timesteps)
    lines = [f"{short_text(table.family)} {table.dimension} table: {table.num_layers} layers x {n_steps} "
             f"timesteps, features {', '.join(table.features)}; lambda_S {lambda_s:g} -> {n} layers per step"]
    for f in table.features:
        counts = cut_counts(table.scores[f], n).tolist()
        best = sorted(range(table.num_layers), key=lambda c: (-counts[c], c))[: min(12, max(n, 1))]
        picked = ", ".join(f"{key_short(table.layer_keys[c])} ({counts[c]}/{n_steps})" for c in best)
        lines.append(f"{f}: most often selected: {picked}")
        ranked = table.timestep_ranking(f)
        lines.append(f"{f}: timesteps by mean score (most sensitive first): "
                     + ", ".join(str(t) for t in ranked[:12]) + (" ..." if len(ranked) > 12 else ""))
    return "\n".join(lines)


def combine_tables(tables: Sequence[SensitivityTable], node: str = ANALYSIS_NODE) -> SensitivityTable:
    """One table from several experiments on the same model: per cell, the mean after dropping the min and
    the max (the reference's way of combining gradings; a plain mean for fewer than 3 tables)."""
    from .analysis_math import trimmed_mean

    if not tables:
        raise ConduitError(node, "no tables to combine.", "pass two or more table files.")
    first = tables[0]
    for t in tables[1:]:
        if (t.family, t.dimension, t.layer_keys, t.timesteps, t.features) != (
                first.family, first.dimension, first.layer_keys, first.timesteps, first.features):
            raise ConduitError(node, "the tables to combine differ in family, dimension, layers, timesteps or "
                               "features.", "combine only tables analysed with the same model, steps and scheduler.")
    scores = {f: trimmed_mean(torch.stack([t.scores[f] for t in tables])) for f in first.features}
    provenance = {"combined": [t.provenance for t in tables],
                  "combine": "per cell, mean after dropping the min and the max" if len(tables) >= 3 else "mean"}
    return SensitivityTable(family=first.family, dimension=first.dimension, layer_keys=list(first.layer_keys),
                            timesteps=list(first.timesteps), scores=scores, source_names=list(first.source_names),
                            provenance=provenance)
