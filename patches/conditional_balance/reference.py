"""Run a style reference through the UNet in the same forward pass as the images being generated.

A model wrapper adds one reference row at the head of every cond/uncond chunk of the batch (so the reference
has its chunk's conditioning), sets a transformer_options entry that tells the attention replaces where the
references are, and removes the rows from the output. The reference never reaches the sampler.

Current hosts: an APPLY_MODEL wrapper with a key (multi-slot). The pinned 2024 host has only the single
model_function_wrapper slot; ours chains inside any function another pack put there, so that function still
sees the batch without references.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import style_math
from ..engine.host import ApplyCall, install_apply_wrapper
from ..engine.run_state import RunState

ApplyFn = Callable[..., torch.Tensor]  # apply(x, t, **c) like BaseModel.apply_model
# planner(apply, x, t, c) -> None (run unchanged) or (reference latent at this sigma [1, C, H, W], value for the marker)
Planner = Callable[[ApplyFn, torch.Tensor, torch.Tensor, dict], "tuple[torch.Tensor, Any] | None"]


def expand_conditioning(c: dict, cond_or_uncond: list, batch: int, marker_key: str, marker: Any) -> dict:
    """The apply_model keyword arguments for the batch with reference rows.

    Per-row tensors get a copy of their chunk's first row for the reference (its conditioning); ControlNet
    residuals get zero rows (the official StyleAligned/CB ControlNet call); transformer_options is copied and
    carries the marker."""
    out = {}
    for name, value in c.items():
        if name == "transformer_options":
            to = dict(value)
            to[marker_key] = marker
            out[name] = to
        elif name == "control" and value is not None:
            out[name] = {k: [_zero_rows(r, cond_or_uncond, batch) for r in rows] for k, rows in value.items()}
        elif torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == batch:
            out[name] = style_math.insert_rows(value, cond_or_uncond)
        else:
            out[name] = value
    return out


def _zero_rows(residual: torch.Tensor | None, cond_or_uncond: list, batch: int) -> torch.Tensor | None:
    if residual is None or residual.shape[0] != batch:
        return residual
    return style_math.insert_zero_rows(residual, cond_or_uncond)


def run_with_reference(apply: ApplyFn, x: torch.Tensor, t: torch.Tensor, c: dict, planner: Planner,
                       marker_key: str) -> torch.Tensor:
    """apply(x, t, **c), with the reference added when the planner asks for it, and stripped again."""
    plan = planner(apply, x, t, c)
    if plan is None:
        return apply(x, t, **c)
    ref_x, marker = plan
    cou = list(c["transformer_options"]["cond_or_uncond"])
    b = x.shape[0]
    x2 = style_math.insert_rows(x, cou, ref_x)
    t2 = style_math.insert_rows(t, cou)
    out = apply(x2, t2, **expand_conditioning(c, cou, b, marker_key, marker))
    return style_math.strip_rows(out, cou)


def install(model_patcher: Any, key: str, planner: Planner) -> None:
    """Install the reference wrapper on an already-cloned ModelPatcher (see engine.host.install_apply_wrapper
    for where it sits on each host)."""
    def around(call: ApplyCall) -> torch.Tensor:
        return run_with_reference(lambda x_, t_, **c_: call.run(x_, t_, c_), call.x, call.t, call.c, planner, key)

    install_apply_wrapper(model_patcher, key, around)


class NoisedReference:
    """A reference latent noised to any sigma with one fixed noise drawn from a seed."""

    def __init__(self, latent: torch.Tensor, seed: int) -> None:
        if latent.ndim != 4 or latent.shape[0] != 1:
            raise ValueError(f"expected one reference latent [1, C, H, W], got {tuple(latent.shape)}")
        self.latent = latent
        self.seed = seed
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def clean(self, base_model: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(model-space clean latent, noise) at the size, device and dtype of like [B, C, H, W]."""
        key = (tuple(like.shape[-2:]), like.device, like.dtype)
        if key not in self._cache:
            lat = self.latent.float()
            if tuple(lat.shape[-2:]) != tuple(like.shape[-2:]):
                import comfy.utils

                lat = comfy.utils.common_upscale(lat, like.shape[-1], like.shape[-2], "bilinear", "center")
            lat = base_model.process_latent_in(lat)
            noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(self.seed))
            self._cache[key] = (lat.to(like.device, like.dtype), noise.to(like.device, like.dtype))
        return self._cache[key]

    def at(self, base_model: Any, model_sampling: Any, sigma: torch.Tensor, like: torch.Tensor,
           apply: ApplyFn | None = None, c: dict | None = None) -> torch.Tensor:
        """The reference at sigma, [1, C, H, W]: clean latent + sigma * the fixed noise."""
        lat, noise = self.clean(base_model, like)
        s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device).flatten()[:1].view(1, 1, 1, 1)
        return model_sampling.noise_scaling(s, noise.clone(), lat)


class InvertedReference(NoisedReference):
    """The reference on its deterministic ODE-inversion path (DDIM inversion in sigma form).

    At a run's first UNet call the clean latent is carried up to that call's sigma in `steps` Euler steps,
    x <- x + (s_next - s) * (x - D(x, s)) / s, on a geometric sigma grid, with each chunk's own conditioning
    (the reference row of a cond chunk is inverted with the positive prompt, of an uncond chunk with the
    negative). Later calls read the stored path, interpolated linearly in log sigma. The fixed noise is not
    used; the path depends only on the latent, the model and the conditioning, so every run reproduces it.
    """

    def __init__(self, latent: torch.Tensor, steps: int) -> None:
        super().__init__(latent, 0)
        if steps < 1:
            raise ValueError("inversion needs at least one step")
        self.steps = steps
        self.state: RunState[dict] = RunState(dict)

    def at(self, base_model: Any, model_sampling: Any, sigma: torch.Tensor, like: torch.Tensor,
           apply: ApplyFn | None = None, c: dict | None = None) -> torch.Tensor:
        if apply is None or c is None:
            raise ValueError("inversion needs the model call to run the reference through")
        s = float(torch.as_tensor(sigma).flatten()[0])
        paths = self.state.at(s)
        to = c["transformer_options"]
        cou = list(to["cond_or_uncond"])
        rows = []
        for chunk, kind in enumerate(cou):
            key = (kind, tuple(like.shape[-2:]), like.device, like.dtype)
            if key not in paths:
                paths[key] = self._invert(base_model, model_sampling, s, like, apply, c, cou, chunk, kind)
            rows.append(_on_path(*paths[key], s))
        return torch.cat(rows)

    def _invert(self, base_model, model_sampling, sigma_top: float, like, apply, c, cou, chunk, kind):
        lat, _ = self.clean(base_model, like)
        size = like.shape[0] // len(cou)
        first = chunk * size
        c1 = {}
        for name, value in c.items():
            if name == "transformer_options":
                c1[name] = {**value, "cond_or_uncond": [kind]}
            elif name == "control":
                c1[name] = None
            elif torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == like.shape[0]:
                c1[name] = value[first:first + 1]
            else:
                c1[name] = value
        s_min = float(model_sampling.sigma_min)
        top = max(sigma_top, s_min)
        grid = [0.0] + torch.logspace(torch.tensor(s_min).log10(), torch.tensor(top).log10(),
                                      self.steps).tolist()[: self.steps]
        grid[-1] = top
        import comfy.model_management as mm

        xs = [lat]
        x = lat
        for s0, s1 in zip(grid[:-1], grid[1:]):
            mm.throw_exception_if_processing_interrupted()  # /interrupt stops the inversion between model calls
            s_eval = max(s0, s_min)
            st = torch.full((1,), s_eval, dtype=like.dtype, device=like.device)
            c1["transformer_options"]["sigmas"] = st
            denoised = apply(x, st, **c1)
            x = x + (s1 - s0) * (x - denoised) / s_eval
            xs.append(x)
        return torch.tensor(grid, dtype=torch.float64), torch.cat(xs)


def _on_path(grid: torch.Tensor, xs: torch.Tensor, sigma: float) -> torch.Tensor:
    """Linear interpolation of the stored path at sigma (in log sigma, and in sigma on the first interval)."""
    if sigma >= float(grid[-1]):
        return xs[-1:]
    hi = int(torch.searchsorted(grid, torch.tensor(sigma, dtype=torch.float64), right=True))
    lo = hi - 1
    a, b = float(grid[lo]), float(grid[hi])
    if a <= 0.0:
        w = sigma / b
    else:
        w = (torch.tensor(sigma).log() - torch.tensor(a).log()).item() / (torch.tensor(b).log()
                                                                           - torch.tensor(a).log()).item()
    return xs[lo:lo + 1] * (1 - w) + xs[hi:hi + 1] * w
