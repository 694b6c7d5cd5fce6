"""Install attention replaces that chain to whatever another pack already put at the same key."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]


def default_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """ComfyUI's own attention for the current device, as a replace slot would compute it."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, extra_options["n_heads"])


def existing_replace(model_options: dict, name: str, key: tuple) -> AttentionFn | None:
    """What ComfyUI would call at this exact (block, id, index) key: the 3-tuple, else the 2-tuple fallback."""
    slot = model_options.get("transformer_options", {}).get("patches_replace", {}).get(name, {})
    if key in slot:
        return slot[key]
    return slot.get(key[:2])


def chained(make: Callable[[AttentionFn], AttentionFn], previous: AttentionFn | None) -> AttentionFn:
    """make(inner) builds our replace around inner: the other pack's function, or plain attention."""
    return make(previous if previous is not None else default_attention)


def set_replace(model_patcher: Any, name: str, key: tuple, make: Callable[[AttentionFn], AttentionFn]) -> None:
    """On an already-cloned ModelPatcher, wrap the function at key (if any) instead of overwriting it."""
    previous = existing_replace(model_patcher.model_options, name, key)
    fn = chained(make, previous)
    block, block_id, index = key
    model_patcher.set_model_patch_replace(fn, name, block, block_id, index)


def options_set_replace(model_options: dict, name: str, key: tuple,
                        make: Callable[[AttentionFn], AttentionFn]) -> dict:
    """Transient form for extra passes: a copied model_options with the chained replace at key."""
    from .compat import options_with_replace

    previous = existing_replace(model_options, name, key)
    return options_with_replace(model_options, chained(make, previous), name, key)
