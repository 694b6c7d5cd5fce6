"""Step context inside a patch: current sigma against the run's schedule and the model's own sampling."""
from __future__ import annotations

import sys

import torch

from .schedule import StepContext, percent_from_timestep, step_index


def _invert_percent(model_sampling, sigma: float) -> float:
    """The percent whose percent_to_sigma is sigma, by bisection (percent_to_sigma falls as percent rises)."""
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if float(model_sampling.percent_to_sigma(mid)) > sigma:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def sigma_to_percent(model_sampling, sigma: float) -> float:
    """Sampling progress that percent_to_sigma maps back to this sigma (continuous, no rounding).
    Flow models (SD3 t = 1000 sigma with a shift, Flux t = sigma) invert their own percent_to_sigma."""
    if is_flow(model_sampling):
        return _invert_percent(model_sampling, float(sigma))
    log_sigmas = getattr(model_sampling, "log_sigmas", None)
    if log_sigmas is None:
        t = float(model_sampling.timestep(torch.tensor([sigma])).flatten()[0])
        return percent_from_timestep(t)
    ls = log_sigmas.detach().float().cpu()
    x = torch.tensor(float(sigma)).clamp_min(1e-12).log().clamp(ls[0], ls[-1])
    hi = int(torch.searchsorted(ls, x).clamp(1, ls.numel() - 1))
    lo = hi - 1
    w = float((x - ls[lo]) / (ls[hi] - ls[lo]))
    return percent_from_timestep(lo + w, ls.numel())


def current_sigma(options: dict) -> float:
    sigmas = options.get("sigmas")
    if sigmas is None:
        raise KeyError("transformer options carry no 'sigmas'; is this called outside sampling?")
    return float(torch.as_tensor(sigmas).flatten()[0])


def step_context(options: dict, model_sampling, sigma: float | None = None) -> StepContext:
    """From transformer/extra options (keys 'sigmas' and, on newer hosts, 'sample_sigmas')."""
    sigma = current_sigma(options) if sigma is None else float(sigma)
    schedule = options.get("sample_sigmas")
    percent = sigma_to_percent(model_sampling, sigma)
    if schedule is None:
        return StepContext(sigma, None, None, percent)
    return StepContext(sigma, step_index(sigma, schedule), int(len(schedule)) - 1, percent)


def percent_to_sigma(model_sampling, percent: float) -> float:
    return float(model_sampling.percent_to_sigma(percent))


def is_flow(model_sampling) -> bool:
    """Flow-matching (CONST) sampling, x = (1 - sigma) * x0 + sigma * noise: SD3/SD3.5, Flux, AuraFlow..."""
    # An object can only be an instance of CONST once ComfyUI's module is loaded, so a stand-in model (the
    # unit tier runs without ComfyUI) is answered without importing it.
    ms = sys.modules.get("comfy.model_sampling")
    const = getattr(ms, "CONST", None)
    return const is not None and isinstance(model_sampling, const)


def noise_time(model_sampling, sigma: float) -> tuple[float, float]:
    """(time, full range) of a noise level, the clock timestep rules such as t < lambda * 1000 read.

    Discrete models: their timestep t in 0..999 and 1000. Flow models: sigma itself and 1, because sigma is
    their time (SD3 feeds the network t = 1000 sigma, Flux t = sigma), so the rule means the same noise level
    on both and is t < lambda * 1000 verbatim on SD3."""
    if is_flow(model_sampling):
        return float(sigma), 1.0
    t = model_sampling.timestep(torch.as_tensor(sigma, dtype=torch.float32).flatten()[:1])
    return float(t.flatten()[0]), 1000.0
