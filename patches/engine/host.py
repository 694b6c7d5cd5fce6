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


def v3_node_api() -> Any | None:
    """ComfyUI's V3 node API (the `comfy_api.latest` module: `io`, `ComfyExtension`), or None on hosts that
    predate it (the pinned 2024 host). The pack registers V3 nodes where this is not None."""
    try:
        import comfy_api.latest as latest
    except ImportError:
        return None
    io = getattr(latest, "io", None)
    if io is None or not all(hasattr(io, name) for name in ("ComfyNode", "Schema", "Custom", "NodeOutput")):
        return None
    return latest


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


@dataclass
class ApplyCall:
    """One BaseModel.apply_model call as seen by a wrapper, on either host."""
    x: torch.Tensor
    t: torch.Tensor  # sigmas, one per row
    c: dict  # every other keyword argument of apply_model (c_crossattn, y, control, transformer_options...)
    model: Any  # comfy BaseModel
    run: Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]

    @property
    def options(self) -> dict:
        return self.c.get("transformer_options") or {}

    def proceed(self) -> torch.Tensor:
        return self.run(self.x, self.t, self.c)


WRAPPER_KEYS_ATTR = "_conduit_wrapper_keys"


def install_apply_wrapper(model_patcher: Any, key: str, fn: Callable[[ApplyCall], torch.Tensor]) -> None:
    """Wrap BaseModel.apply_model: an APPLY_MODEL wrapper where the host has them (list-type, run in the order
    they were added), else the single model_function_wrapper slot, chained inside whatever function already
    sits there."""
    if has_patcher_extension():
        import comfy.patcher_extension as pe

        def wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                    **kwargs):
            c = dict(kwargs, c_concat=c_concat, c_crossattn=c_crossattn, control=control,
                     transformer_options=transformer_options if transformer_options is not None else {})
            return fn(ApplyCall(x, t, c, executor.class_obj, lambda x_, t_, c_: executor(x_, t_, **c_)))

        model_patcher.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, key, wrapper)
        return

    previous = model_patcher.model_options.get("model_function_wrapper")

    def unet_wrapper(apply_model, args):
        model = apply_model.__self__ if hasattr(apply_model, "__self__") else None

        def ours(x, t, **c):
            return fn(ApplyCall(x, t, c, model, lambda x_, t_, c_: apply_model(x_, t_, **c_)))

        if previous is not None:  # innermost, so rows another pack's wrapper adds are seen too
            return previous(ours, args)
        return ours(args["input"], args["timestep"], **args["c"])

    setattr(unet_wrapper, WRAPPER_KEYS_ATTR, {key} | getattr(previous, WRAPPER_KEYS_ATTR, set()))
    model_patcher.set_model_unet_function_wrapper(unet_wrapper)


def has_apply_wrapper(model_patcher: Any, key: str) -> bool:
    """Whether a Conduit apply-model wrapper under key is already installed (so it is added once per model).
    On the 2024 host a foreign wrapper put on top of ours hides it; a second copy is then harmless."""
    if has_patcher_extension():
        import comfy.patcher_extension as pe

        return bool(model_patcher.get_wrappers(pe.WrappersMP.APPLY_MODEL, key))
    top = model_patcher.model_options.get("model_function_wrapper")
    return key in getattr(top, WRAPPER_KEYS_ATTR, set())


# -- schedules ----------------------------------------------------------------------------------------------

def scheduler_sigmas(model_patcher, scheduler: str, steps: int) -> torch.Tensor:
    """A scheduler's sigmas for this model (what BasicScheduler outputs): newer hosts take the model_sampling
    object, the 2024 host the BaseModel."""
    import comfy.samplers

    if hasattr(comfy.samplers, "calculate_sigmas"):
        return comfy.samplers.calculate_sigmas(model_sampling(model_patcher), scheduler, steps).float()
    return comfy.samplers.calculate_sigmas_scheduler(model_patcher.model, scheduler, steps).float()


def ksampler_sigmas(model_patcher, steps: int, sampler: str, scheduler: str, denoise: float = 1.0,
                    device: Any = "cpu") -> torch.Tensor:
    """The sigmas a KSampler node would use (its denoise and penultimate-sigma rules included): the 2024 host
    wants the BaseModel there, newer hosts the patcher."""
    import comfy.samplers

    target = model_patcher if hasattr(model_patcher, "get_model_object") else model_patcher.model
    ks = comfy.samplers.KSampler(target, steps=steps, device=device, sampler=sampler, scheduler=scheduler,
                                 denoise=denoise, model_options=model_patcher.model_options)
    return ks.sigmas.detach().float().cpu()


# -- conditioning -------------------------------------------------------------------------------------------

def processed_conds(base, conds: list, x: torch.Tensor, latent: torch.Tensor | None, seed: int) -> list:
    """Converted conds (see convert_cond) processed the way a sampler does before calc_cond_batch."""
    import comfy.samplers

    if hasattr(comfy.samplers, "process_conds"):
        return comfy.samplers.process_conds(base, x, {"extra": conds}, x.device, latent, None, seed)["extra"]
    comfy.samplers.resolve_areas_and_cond_masks(conds, x.shape[2], x.shape[3], x.device)
    comfy.samplers.calculate_start_end_timesteps(base, conds)
    if hasattr(base, "extra_conds"):
        conds = comfy.samplers.encode_model_conds(base.extra_conds, conds, x, x.device, "negative",
                                                  latent_image=latent, denoise_mask=None, seed=seed)
    return conds


def convert_cond(conditioning: list) -> list:
    try:
        from comfy.sampler_helpers import convert_cond as convert
    except ImportError:  # 2024 host
        from comfy.sample import convert_cond as convert
    return convert(conditioning)


# -- LoRA ---------------------------------------------------------------------------------------------------

def convert_lora(lora_sd: dict) -> dict:
    """Newer hosts normalise other trainers' LoRA key formats first; the 2024 host's loader reads the same
    formats directly."""
    try:
        import comfy.lora_convert
    except ImportError:
        return lora_sd
    return comfy.lora_convert.convert_lora(lora_sd)


# -- run start ----------------------------------------------------------------------------------------------

def add_run_start_wrapper(model_patcher: Any, key: str, fn: Callable[[], None]) -> bool:
    """Call fn at the start of every sampling run of this patcher (an OUTER_SAMPLE wrapper). False on the 2024
    host, which has none: callers then detect a new run themselves."""
    if not has_patcher_extension():
        return False
    import comfy.patcher_extension as pe

    def run_start_then_sample(executor, *args, **kwargs):
        fn()
        return executor(*args, **kwargs)

    model_patcher.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, key, run_start_then_sample)
    return True


def cfg_location(model, extra_args: dict) -> tuple[str, Any]:
    """Where the running sampler keeps its CFG scale, for a sampler function's `model`: ("extra_args", None)
    on the 2024 host (extra_args["cond_scale"]), ("guider", guider) on newer hosts (guider.cfg), or
    ("none", None) for a guider without one."""
    if "cond" in extra_args:
        return "extra_args", None
    wrap = model.inner_model
    return ("guider", wrap) if hasattr(wrap, "cfg") else ("none", None)
