"""Host differences in one place: the pinned 2024 ComfyUI and current ComfyUI expose different hooks."""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


def has_patcher_extension() -> bool:
    try:
        import comfy.patcher_extension  # noqa: F401
    except ImportError:
        return False
    return True


def has_calc_cond_batch() -> bool:
    import comfy.samplers

    return hasattr(comfy.samplers, "calc_cond_batch")


def calc_cond_batch(model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict) -> list:
    """One denoised (x0) prediction per entry of conds, on either host (None entries give zeros)."""
    import comfy.samplers

    if hasattr(comfy.samplers, "calc_cond_batch"):
        return comfy.samplers.calc_cond_batch(model, conds, x, sigma, model_options)
    out: list = []
    for i in range(0, len(conds), 2):  # the 2024 host evaluates at most a (cond, uncond) pair per call
        pair = list(conds[i:i + 2]) + [None]
        first, second = pair[0], pair[1]
        if first is None and second is None:
            out += [torch.zeros_like(x), torch.zeros_like(x)]
        elif first is None:
            b, _ = comfy.samplers.calc_cond_uncond_batch(model, second, None, x, sigma, model_options)
            out += [torch.zeros_like(x), b]
        else:
            a, b = comfy.samplers.calc_cond_uncond_batch(model, first, second, x, sigma, model_options)
            out += [a, b]
    return out[:len(conds)]


def model_sampling(model_patcher) -> Any:
    if hasattr(model_patcher, "get_model_object"):
        return model_patcher.get_model_object("model_sampling")
    return model_patcher.model.model_sampling


@dataclass
class GuiderParts:
    base: Any  # comfy BaseModel
    positive: list | None
    negative: list | None
    cfg: float | None


def guider_parts(model, extra_args: dict) -> GuiderParts:
    """Processed conds and CFG of the running sampler, for a sampler function's `model` (the KSamplerX0Inpaint
    wrapper): the 2024 host passes them in extra_args, newer hosts keep them on the guider it wraps."""
    wrap = model.inner_model
    base = wrap.inner_model
    if "cond" in extra_args:
        return GuiderParts(base, extra_args.get("cond"), extra_args.get("uncond"), extra_args.get("cond_scale"))
    conds = getattr(wrap, "conds", None) or {}
    return GuiderParts(base, conds.get("positive"), conds.get("negative"), getattr(wrap, "cfg", None))


def diffusion_model(model_patcher) -> torch.nn.Module:
    return model_patcher.model.diffusion_model


def options_with_replace(model_options: dict, fn: Callable, name: str, key: tuple) -> dict:
    """A shallow copy of model_options with patches_replace[name][key] = fn, sharing everything else."""
    mo = dict(model_options)
    to = dict(mo.get("transformer_options", {}))
    pr = dict(to.get("patches_replace", {}))
    slot = dict(pr.get(name, {}))
    slot[key] = fn
    pr[name] = slot
    to["patches_replace"] = pr
    mo["transformer_options"] = to
    return mo


def options_with_transformer_keys(model_options: dict, **keys: Any) -> dict:
    mo = dict(model_options)
    to = dict(mo.get("transformer_options", {}))
    to.update(keys)
    mo["transformer_options"] = to
    return mo


def clone_options(model_options: dict) -> dict:
    """A copy of model_options whose patch containers can be edited without touching the original."""
    mo = dict(model_options)
    to = dict(mo.get("transformer_options", {}))
    for k in ("patches", "patches_replace"):
        if k in to:
            to[k] = {name: copy.copy(v) for name, v in to[k].items()}
    mo["transformer_options"] = to
    return mo
