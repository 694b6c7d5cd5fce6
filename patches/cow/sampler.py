"""COW as ComfyUI samplers: the sigma-space inversion and the cyclic one-way sampler (KSAMPLER functions).

Both run inside ComfyUI's own sampling path (SamplerCustom / SamplerCustomAdvanced / comfy.sample), so model
loading, conditioning, ControlNet and every model patch work as in a normal run. The model passed to a
sampler function returns the CFG-guided denoised latent.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import cow_math as cm
from ..engine.host import (calc_cond_batch, cfg_location, convert_cond, guider_parts, model_sampling,
                           options_with_transformer_keys, processed_conds, scheduler_sigmas)
from ..engine.errors import ConduitError
from ..engine.phases import PHASE_KEY
from ..engine.steps import is_flow

log = logging.getLogger(__name__)



SAMPLER_NODE = "Conduit COW Cycle Sampler"


@dataclass
class CowInversion:
    """Inverted condition latents, canvas-sized and in the model's internal latent scale, keyed by level."""
    sigmas: list[float]
    levels: dict[int, torch.Tensor]
    mask: torch.Tensor  # [H, W] canvas latent mask, 1 = condition
    mode: str  # "crop alone" | "in place"
    cfg: float
    reached: int  # noisiest level recorded
    flow: bool = False  # latents of a flow-matching model, x = (1 - sigma) x0 + sigma eps (else VE)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


@dataclass
class CowSpec:
    inversion: CowInversion
    cycles: int = 10
    cycle_start: float = 0.7
    cycle_end: float = 0.5
    eta_cycle: float = 1.0
    eta_final: float = 0.1
    preservation: float = 0.4
    renoise: str = "exact"
    seed: int = 42
    suppress: list | None = None  # CONDITIONING
    diversity: list | None = None  # CONDITIONING
    node: str = SAMPLER_NODE
    observer: Callable[[cm.Op, torch.Tensor], None] | None = field(default=None, repr=False)


def model_sigmas(model_patcher, scheduler: str, steps: int) -> torch.Tensor:
    """A scheduler's sigmas for this model on either host (what BasicScheduler outputs)."""
    return scheduler_sigmas(model_patcher, scheduler, steps)


def counting_clone(model_patcher) -> tuple[Any, list[int]]:
    """A clone whose batched UNet calls are counted in the returned one-item list (tests and benchmarks)."""
    m = model_patcher.clone()
    calls = [0]

    def wrap(apply, args):
        calls[0] += 1
        return apply(args["input"], args["timestep"], **args["c"])
    m.set_model_unet_function_wrapper(wrap)
    return m, calls


# -------------------------------------------------------------------------------------------- inversion

def invert_path(denoise: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor,
                sigmas_up: list[float], flow: bool = False) -> list[torch.Tensor]:
    """Deterministic DDIM inversion along ascending sigmas; returns the latent at every sigma (first = x)."""
    out = [x]
    for a, b in zip(sigmas_up[:-1], sigmas_up[1:]):
        model_input = x * cm.inversion_input_scale(a, b, flow)
        x = cm.inversion_step(x, model_input, denoise(model_input, b), a, b)
        out.append(x)
    return out


def _denoiser(model, extra_args: dict, phase: str | None = None) -> Callable[[torch.Tensor, float], torch.Tensor]:
    args = dict(extra_args or {})
    if phase is not None:
        args["model_options"] = options_with_transformer_keys(args.get("model_options", {}),
                                                              **{PHASE_KEY: {"phase": phase}})

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return model(x, x.new_full((x.shape[0],), float(sigma)), **args)
    return denoise


@torch.no_grad()
def sample_invert(model, x, sigmas, extra_args=None, callback=None, disable=None, record=None, flow=False):
    """KSAMPLER function: sigmas ascend from 0; every intermediate latent is appended to `record`.
    It reports no progress to ComfyUI, so it checks /interrupt itself before every model call."""
    import comfy.model_management as mm

    denoise = _denoiser(model, extra_args, "invert")

    def checked(x_: torch.Tensor, sigma: float) -> torch.Tensor:
        mm.throw_exception_if_processing_interrupted()
        return denoise(x_, sigma)

    path = invert_path(checked, x, [float(s) for s in sigmas], flow)
    if record is not None:
        record.extend(t.detach().clone() for t in path)
    return path[-1]


def inversion_sampler(record: list, flow: bool = False):
    import comfy.samplers

    return comfy.samplers.KSAMPLER(sample_invert, extra_options={"record": record, "flow": flow})


def run_inversion(model, positive, negative, sigmas: list[float], samples: torch.Tensor, cfg: float,
                  reached: int, flow: bool = False) -> list[torch.Tensor]:
    """Inversion through ComfyUI's own sampling path (model loading, conds, patches); latents in model scale.
    (ComfyUI's closing inverse_noise_scaling of the returned latent is not used: the record is.)"""
    import comfy.sample

    n = len(sigmas) - 1
    up = torch.tensor(sigmas[::-1][: n - reached + 1], dtype=torch.float32)
    record: list = []
    comfy.sample.sample_custom(model, torch.zeros_like(samples), cfg, inversion_sampler(record, flow), up, positive,
                               negative, samples, disable_pbar=True, seed=0)
    return record


def invert_condition(model, positive, negative, sigmas: list[float], samples: torch.Tensor, cfg: float,
                     reached: int, mode: str, seed) -> tuple[CowInversion, torch.Tensor]:
    """(recorded inversion, noisiest latent in user scale). Crop latents are placed on the canvas grid."""
    n = len(sigmas) - 1
    hw = tuple(seed.canvas_latent_mask.shape)
    levels = {}
    flow = is_flow(model_sampling(model))
    path = run_inversion(model, positive, negative, sigmas, samples, cfg, reached, flow)
    for j, lat in enumerate(path):
        lat = lat.float().cpu()
        levels[n - j] = cm.paste_latent(lat, seed.box, hw) if mode == "crop alone" else lat
    inv = CowInversion(list(sigmas), levels, seed.canvas_latent_mask.clone().float(), mode, float(cfg), reached,
                       flow)
    return inv, model.model.process_latent_out(path[-1].float().cpu())


# ------------------------------------------------------------------------------------- guidance helpers

def denoise_with_cfg(model, extra_args: dict, cfg: float, phase: str) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The sampler's own guided call with a different CFG scale (the inversion's)."""
    where, wrap = cfg_location(model, extra_args)
    if where == "extra_args":
        return _denoiser(model, {**extra_args, "cond_scale": cfg}, phase)
    inner = _denoiser(model, extra_args, phase)
    if where == "none":
        log.warning("Conduit COW: this guider has no CFG scale; the background inversion uses the guider as is")
        return inner

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        old = wrap.cfg
        wrap.cfg = cfg
        try:
            return inner(x, sigma)
        finally:
            wrap.cfg = old
    return denoise


def process_extra_conds(base, conditioning: list, x: torch.Tensor, latent: torch.Tensor | None, seed: int) -> list:
    """Turn a CONDITIONING into the processed cond list calc_cond_batch expects, on either host."""
    conds = convert_cond(conditioning)
    for c in conds:
        for key in ("control", "gligen"):
            if c.pop(key, None) is not None:
                log.warning("Conduit COW: %s attached to a suppress/diversity prompt is ignored", key)
    return processed_conds(base, conds, x, latent, seed)


# ------------------------------------------------------------------------------------------ the sampler

def _check_inversion(spec: CowSpec, sigmas: list[float], plan: cm.CyclePlan, x: torch.Tensor) -> None:
    inv = spec.inversion
    if not cm.match_schedule(inv.sigmas, sigmas):
        raise ConduitError(
            spec.node, f"the sampler got {len(sigmas) - 1} steps ({sigmas[0]:.4g}..{sigmas[-2]:.4g}) but the "
                       f"inversion used {inv.steps} steps ({inv.sigmas[0]:.4g}..{inv.sigmas[-2]:.4g}).",
            "feed the same SIGMAS (same scheduler, steps and model) to COW Invert and to the sampler.")
    if inv.reached > plan.top:
        raise ConduitError(
            spec.node, f"the cycle starts at step fraction {spec.cycle_start:g} but the inversion stops at "
                       f"level {inv.steps - inv.reached} of {inv.steps}.",
            "raise invert_to on COW Invert to at least the sampler's cycle_start.")
    if tuple(x.shape[-2:]) != tuple(inv.mask.shape):
        raise ConduitError(
            spec.node, f"the latent is {x.shape[-1] * 8}x{x.shape[-2] * 8} but the seed canvas is "
                       f"{inv.mask.shape[1] * 8}x{inv.mask.shape[0] * 8}.",
            "sample the VAE-encoded seed canvas (the same canvas the seed node made).")


def _check_latent_form(spec: CowSpec, model, extra_args: dict) -> None:
    """The inversion's latents must be in the sampling model's form (VE or flow): mixing them is wrong."""
    if getattr(getattr(model, "inner_model", None), "inner_model", None) is None:
        return  # not ComfyUI's sampler wrapper (a bare denoiser function): nothing to compare with
    sampling = getattr(guider_parts(model, extra_args).base, "model_sampling", None)
    if sampling is None:
        return
    flow = is_flow(sampling)
    if flow != spec.inversion.flow:
        names = {True: "a flow-matching model (SD3/SD3.5, Flux)", False: "a UNet (SD1.x, SD2.x, SDXL)"}
        raise ConduitError(spec.node, f"the inversion was made with {names[spec.inversion.flow]} but the sampler "
                                      f"runs {names[flow]}; their latents differ.",
                           "invert with the same model the sampler uses.")


def _background(spec: CowSpec, model, x: torch.Tensor, extra_args: dict, sigmas: list[float],
                plan: cm.CyclePlan) -> torch.Tensor:
    """The canvas inverted to the cycle's end level; reuses the in-place inversion when it is this canvas."""
    inv = spec.inversion
    latent = getattr(model, "latent_image", None)  # set by KSAMPLER on both hosts
    latent = x if latent is None else latent.to(x)
    start = inv.levels[plan.steps].to(x)
    if inv.mode == "in place" and start.shape == latent.shape and torch.allclose(start, latent, atol=1e-4):
        return inv.levels[plan.bottom].to(x)
    up = [sigmas[k] for k in range(plan.steps, plan.bottom - 1, -1)]
    return invert_path(denoise_with_cfg(model, extra_args, inv.cfg, "invert"), latent, up, inv.flow)[-1]


def _masked_denoiser(spec: CowSpec, model, x: torch.Tensor, extra_args: dict, latent: torch.Tensor | None):
    """Denoiser for cycle steps with the official masked CFG, or None when no extra prompt is given."""
    if spec.suppress is None and spec.diversity is None:
        return None
    parts = guider_parts(model, extra_args)
    if parts.positive is None or parts.negative is None or parts.cfg is None:
        raise ConduitError(spec.node, "masked CFG needs a guider with positive, negative and a CFG scale.",
                           "use SamplerCustom (or a CFGGuider), or leave suppress/diversity unconnected.")
    seed = int(extra_args.get("seed") or 0)
    sup = None if spec.suppress is None else process_extra_conds(parts.base, spec.suppress, x, latent, seed)
    div = None if spec.diversity is None else process_extra_conds(parts.base, spec.diversity, x, latent, seed)
    conds = [parts.positive, parts.negative] + [c for c in (sup, div) if c is not None]
    region = spec.inversion.mask.to(x)

    def denoise(xt: torch.Tensor, sigma: float, options: dict) -> torch.Tensor:
        out = calc_cond_batch(parts.base, conds, xt, xt.new_full((xt.shape[0],), float(sigma)), options)
        d_txt, d_neg = out[0], out[1]
        rest = iter(out[2:])
        d_sup = next(rest) if sup is not None else None
        d_div = next(rest) if div is not None else None
        u = cm.masked_uncond(d_neg, d_sup, d_div, region)
        return u + (d_txt - u) * parts.cfg
    return denoise


@torch.no_grad()
def sample_cow(model, x, sigmas, extra_args=None, callback=None, disable=None, cow: CowSpec | None = None):
    """KSAMPLER function running the cyclic one-way schedule on the sampler's sigmas."""
    spec = cow
    extra_args = dict(extra_args or {})
    sig = [float(s) for s in sigmas]
    plan = cm.cycle_plan(len(sig) - 1, spec.cycle_start, spec.cycle_end, spec.preservation, spec.cycles, spec.node)
    _check_inversion(spec, sig, plan, x)
    _check_latent_form(spec, model, extra_args)
    flow = spec.inversion.flow
    renoise = cm.renoise_coefficients(sig, plan.bottom, plan.top, spec.renoise, spec.node, flow)
    if extra_args.get("denoise_mask") is not None:
        log.warning("Conduit COW: the latent noise mask is ignored; the seed canvas masks define the region")
    gen = torch.Generator().manual_seed(int(spec.seed))

    def noise_like(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen).to(t)

    latent = getattr(model, "latent_image", None)
    mask = spec.inversion.mask.to(x)
    levels = {k: spec.inversion.levels[k].to(x) for k in plan.levels_needed}
    masked = _masked_denoiser(spec, model, x, extra_args, latent)
    base_options = extra_args.get("model_options", {})
    x = _background(spec, model, x, extra_args, sig, plan)

    total = sum(plan.model_steps())
    done = 0
    for op in plan.ops():
        if op.kind == "renoise":
            a, b = renoise
            x = x * a + noise_like(x) * b
        elif op.kind == "inject":
            x = cm.inject(x, levels[op.level], mask)
        else:
            s, s_next = sig[op.level], sig[op.level + 1]
            info = {"phase": op.phase, "cycle": op.cycle, "cycles": plan.cycles}
            options = options_with_transformer_keys(base_options, **{PHASE_KEY: info})
            if op.phase == "cycle" and masked is not None:
                denoised = masked(x, s, options)
            else:
                denoised = model(x, x.new_full((x.shape[0],), s), **{**extra_args, "model_options": options})
            eta = spec.eta_cycle if op.phase == "cycle" else spec.eta_final
            up = cm.ancestral_sigmas(s, s_next, eta, flow)[1]
            x = cm.ddim_step(x, denoised, s, s_next, eta, noise_like(x) if up > 0 else None, flow)
            done += 1
            if callback is not None:
                i = min(plan.steps - 1, (done * plan.steps) // max(total, 1) - 1)
                callback({"x": x, "i": max(i, 0), "sigma": s, "sigma_hat": s, "denoised": denoised})
        if spec.observer is not None:
            spec.observer(op, x)
    return x


def cow_sampler(spec: CowSpec):
    import comfy.samplers

    return comfy.samplers.KSAMPLER(sample_cow, extra_options={"cow": spec})
