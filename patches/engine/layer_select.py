"""Pick SEG's self-attention layers: a preset or a list like "m0,o1.2,i4-5" resolved against the model."""
from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import ConduitError
from .layers import AttentionLayer

PRESETS = ("middle", "output", "input", "all")
DIT_PRESETS = {"double": "double_block", "single": "single_block"}  # DiT stacks (SD3's joint blocks: double)
ALL_PRESETS = (*PRESETS, *DIT_PRESETS)
BLOCK_LETTERS = {"i": "input", "d": "input", "m": "middle", "o": "output", "u": "output"}
DIT_LETTERS = {"d": "double_block", "j": "double_block", "s": "single_block"}
# letter, block id or id range, optional depth or depth range
# (at most 4 digits each: no model has more blocks, and a longer number is a typo, not a layer)
_TOKEN = re.compile(r"^([a-z])(\d{1,4})(?:-(\d{1,4}))?(?:\.(\d{1,4})(?:-(\d{1,4}))?)?$")
SYNTAX_FIX = ("write comma-separated tokens: a block letter (i = input, m = middle, o = output), the block "
              "number, an optional range (i4-5) and an optional depth or depth range (o1.2, m0.0-3); "
              "'Conduit Model Layers' lists the names.")
DIT_SYNTAX_FIX = ("write comma-separated tokens: a block letter (d = double or SD3 joint block, s = single "
                  "block), the block number and an optional range (d7, d7-9, s0-3); 'Conduit Model Layers' "
                  "lists the names.")


def _is_dit(layers: Sequence[AttentionLayer]) -> bool:
    return bool(layers) and layers[0].is_dit


def preset_layers(layers: Sequence[AttentionLayer], preset: str) -> list[AttentionLayer]:
    if preset == "all":
        return list(layers)
    if preset not in ALL_PRESETS:
        raise ValueError(f"unknown layer preset {preset!r}")
    block = DIT_PRESETS.get(preset, preset)
    return [layer for layer in layers if layer.block == block]


def _span(first: str, last: str | None, token: str, node: str, what: str) -> range:
    a = int(first)
    b = a if last is None else int(last)
    if b < a:
        raise ConduitError(node, f"layer token '{token}' has a reversed {what} range {a}-{b}.", SYNTAX_FIX)
    return range(a, b + 1)


def parse_tokens(text: str, node: str, dit: bool = False) -> list[tuple[str, str, range, range | None]]:
    """[(token, block, ids, depths or None)] for every comma-separated token; ConduitError names a bad one.
    A DiT's tokens use its own block letters (d, s) and have no depth."""
    letters, fix = (DIT_LETTERS, DIT_SYNTAX_FIX) if dit else (BLOCK_LETTERS, SYNTAX_FIX)
    out = []
    for raw in text.split(","):
        token = raw.strip().lower()
        if not token:
            continue
        m = _TOKEN.match(token.replace(" ", ""))
        if m is None or m.group(1) not in letters or (dit and m.group(4) is not None):
            raise ConduitError(node, f"layer token '{raw.strip()}' is not understood.", fix)
        letter, id0, id1, d0, d1 = m.groups()
        ids = _span(id0, id1, token, node, "block")
        depths = None if d0 is None else _span(d0, d1, token, node, "depth")
        out.append((token, letters[letter], ids, depths))
    if not out:
        raise ConduitError(node, "the custom layer list is empty.", fix)
    return out


def named_layers(layers: Sequence[AttentionLayer], text: str, node: str, kind: str, pick: str) -> list[AttentionLayer]:
    """Layers named by the list, in forward order; a token that names none of `layers` (the model's `kind`
    layers) is an error whose fix starts with `pick` and lists them."""
    chosen: set[tuple] = set()
    for token, block, ids, depths in parse_tokens(text, node, _is_dit(layers)):
        hits = [layer.key for layer in layers
                if layer.block == block and layer.block_id in ids and (depths is None or layer.index in depths)]
        if not hits:
            raise ConduitError(node, f"layer token '{token}' names no {kind} layer of this model.",
                               f"{pick}: {', '.join(layer.short for layer in layers)}.")
        chosen.update(hits)
    return [layer for layer in layers if layer.key in chosen]


def custom_layers(layers: Sequence[AttentionLayer], text: str, node: str) -> list[AttentionLayer]:
    return named_layers(layers, text, node, "self-attention", "pick from the model's layers")


def custom_list(choice: str, custom: str, node: str) -> str | None:
    """The stripped custom layer list when the layers input is 'custom', else None (a preset). A list typed
    beside a preset is an error rather than silently ignored."""
    custom = (custom or "").strip()
    if choice == "custom":
        return custom
    if custom:
        raise ConduitError(node, f"custom_layers is set ('{custom}') but layers is '{choice}'.",
                           "set layers to 'custom' to use the list, or clear custom_layers.")
    return None


def select_layers(layers: Sequence[AttentionLayer], preset: str, custom: str, node: str) -> list[AttentionLayer]:
    """The node's layer choice: preset unless preset == 'custom', then the custom list."""
    text = custom_list(preset, custom, node)
    if text is not None:
        return custom_layers(layers, text, node)
    chosen = preset_layers(layers, preset)
    if not chosen:
        usable = [p for p in ALL_PRESETS if preset_layers(layers, p)]
        raise ConduitError(node, f"this model has no self-attention layers in the '{preset}' preset.",
                           f"pick another preset ({', '.join(usable)}) or a custom list.")
    return chosen


def default_layers(layers: Sequence[AttentionLayer], spec: str, node: str) -> list[AttentionLayer]:
    """A family's default list (e.g. "d7-9") restricted to the blocks this model has; when it has none of
    them (a pruned or tiny model), the preset the spec names, or the middle layer of the stack."""
    if spec in ALL_PRESETS:
        chosen = preset_layers(layers, spec)
        if chosen:
            return chosen
    else:
        chosen = []
        for _, block, ids, depths in parse_tokens(spec, node, _is_dit(layers)):
            chosen += [layer for layer in layers if layer.block == block and layer.block_id in ids
                       and (depths is None or layer.index in depths) and layer not in chosen]
        if chosen:
            return sorted(chosen, key=lambda layer: layer.order)
    return [layers[len(layers) // 2]]


def layer_list(layers: Sequence[AttentionLayer], text: str, node: str) -> list[AttentionLayer]:
    """A free-text layer input (SOW's): empty or a preset name, else the same comma-separated tokens as
    SEG's custom list, so every Conduit node reads one layer grammar."""
    text = (text or "").strip().lower()
    if text in ("", "all"):
        return list(layers)
    if text in ALL_PRESETS:
        return select_layers(layers, text, "", node)
    return custom_layers(layers, text, node)
