"""Install attention replaces that chain to whatever another pack put at the same layer, whenever it put it.

ComfyUI looks an attention replace up under the layer's full key `(block, id, index)` first, and falls back to
the short key `(block, id)`. A Conduit replace sits at the full key, so without care it would shadow any
short-key replace: one another pack installs later (`set_model_attn1_replace(fn, block, id)`), or one it sets
only for its own extra pass (core PerturbedAttentionGuidance, sd-perturbed-attention's PAG/SEG set theirs in a
post-CFG function on a copy of the model options). Both are invisible when Conduit installs its replace.

So every Conduit replace carries a `Link`: how to rebuild it (`make`), what it wraps, and where that came
from. A resolver that runs at every model call (an apply-model wrapper, installed once per model) looks at
the options of that very call, and where the short key now holds something other than what a Conduit chain
wraps, rebuilds the chain around it. Rebuilt functions are cached per (chain, short-key function), so a pass
sees the same function objects every time it runs with the same patches.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]
Make = Callable[[AttentionFn], AttentionFn]

LINK_ATTR = "_conduit_link"
RESOLVER_KEY = "conduit_attention_chain"
EXACT, SHORT, NONE = "exact", "short", "none"  # where a chain's inner function was found
_REBOUND_CACHE = 8  # distinct short-key functions remembered per chain (packs reuse theirs across calls)


def default_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """ComfyUI's own attention for the current device, as a replace slot would compute it."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, extra_options["n_heads"])


def is_foreign(fn: AttentionFn) -> bool:
    """True for another pack's attention function (not ComfyUI's plain attention)."""
    return fn is not default_attention


@dataclass(eq=False)
class Link:
    make: Make
    inner: AttentionFn | None  # None: ComfyUI's plain attention
    source: str  # EXACT, SHORT or NONE
    rebound: OrderedDict = field(default_factory=OrderedDict)  # id(short fn) -> (short fn, rebuilt fn)


def link_of(fn: Any) -> Link | None:
    return getattr(fn, LINK_ATTR, None)


def lookup(model_options: dict, name: str, key: tuple) -> tuple[AttentionFn | None, str]:
    """What ComfyUI would call at this (block, id, index) key, and which key form it sits under."""
    slot = model_options.get("transformer_options", {}).get("patches_replace", {}).get(name, {})
    if key in slot:
        return slot[key], EXACT
    if key[:2] in slot:
        return slot[key[:2]], SHORT
    return None, NONE


def existing_replace(model_options: dict, name: str, key: tuple) -> AttentionFn | None:
    return lookup(model_options, name, key)[0]


def chained(make: Make, previous: AttentionFn | None, source: str = EXACT) -> AttentionFn:
    """make(inner) around the other pack's function (or plain attention), tagged so it can be rebuilt."""
    built = make(previous if previous is not None else default_attention)
    fn = built
    if fn is previous or fn is default_attention or link_of(fn) is not None:
        def fn(q, k, v, extra_options):  # never tag a function we do not own
            return built(q, k, v, extra_options)
    setattr(fn, LINK_ATTR, Link(make, previous, source if previous is not None else NONE))
    return fn


def chain_at(model_options: dict, name: str, key: tuple, make: Make) -> AttentionFn:
    previous, source = lookup(model_options, name, key)
    return chained(make, previous, source)


def rebind(fn: AttentionFn, short: AttentionFn | None) -> AttentionFn:
    """fn as ComfyUI semantics want it when the short key holds `short`: a chain whose innermost function came
    from the short key (or was plain attention) now wraps `short`; another pack's full-key function, which
    shadows the short key in ComfyUI too, stays."""
    link = link_of(fn)
    if link is None:
        return fn
    if link.source == EXACT:
        new_inner = rebind(link.inner, short)
        target = new_inner
        if new_inner is link.inner:
            return fn
    else:
        if short is link.inner:
            return fn
        target = short
    hit = link.rebound.get(id(target))
    if hit is not None and hit[0] is target:
        return hit[1]
    new = chained(link.make, target, EXACT if link.source == EXACT else SHORT)  # chained records NONE for None
    link.rebound[id(target)] = (target, new)
    while len(link.rebound) > _REBOUND_CACHE:
        link.rebound.popitem(last=False)
    return new


def resolve(transformer_options: dict) -> dict:
    """The options of one model call with every Conduit chain rebuilt around the short-key replaces present in
    that call; the same dict when nothing needs it (the usual case)."""
    replaces = transformer_options.get("patches_replace")
    if not replaces:
        return transformer_options
    new_replaces = None
    for name, slot in replaces.items():
        changed = None
        for key, fn in slot.items():
            if len(key) != 3 or link_of(fn) is None:
                continue
            new = rebind(fn, slot.get(key[:2]))
            if new is not fn:
                changed = changed if changed is not None else dict(slot)
                changed[key] = new
        if changed is not None:
            new_replaces = new_replaces if new_replaces is not None else dict(replaces)
            new_replaces[name] = changed
    if new_replaces is None:
        return transformer_options
    return {**transformer_options, "patches_replace": new_replaces}


def _resolve_call(call: Any) -> torch.Tensor:
    opts = call.c.get("transformer_options")
    if opts:
        resolved = resolve(opts)
        if resolved is not opts:
            call.c = {**call.c, "transformer_options": resolved}
    return call.proceed()


def install_resolver(model_patcher: Any) -> None:
    """Once per (cloned) model: the call-time resolver that keeps short-key replaces of other packs alive."""
    from .host import has_apply_wrapper, install_apply_wrapper

    if has_apply_wrapper(model_patcher, RESOLVER_KEY):
        return
    install_apply_wrapper(model_patcher, RESOLVER_KEY, _resolve_call)


def set_replace(model_patcher: Any, name: str, key: tuple, make: Make) -> None:
    """On an already-cloned ModelPatcher, wrap the function at key (if any) instead of overwriting it."""
    fn = chain_at(model_patcher.model_options, name, key, make)
    block, block_id, index = key
    model_patcher.set_model_patch_replace(fn, name, block, block_id, index)
    install_resolver(model_patcher)


def options_set_replace(model_options: dict, name: str, key: tuple, make: Make) -> dict:
    """Transient form for extra passes: a copied model_options with the chained replace at key. It is built at
    call time, so it already sees the short-key replaces of that call."""
    from .host import options_with_replace

    return options_with_replace(model_options, chain_at(model_options, name, key, make), name, key)
