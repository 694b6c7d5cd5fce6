"""The Abs-Grad-SAM sampler function: an ordinary k-diffusion sampler, split at the manipulation steps.

At each manipulation step m (the first schedule sigma at or below the target level) the latent x_m gets one
gradient pass (gradsam_pass), then every element outside the subject mask is replaced by the reference
latent noised to sigma_m with one fixed noise. Sampling then continues from sigma_m; multistep samplers
restart there, since their history describes the latent before the replacement. With no manipulation step
in the run the inner sampler runs once over the whole schedule, exactly as without this node.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from . import gradsam_math as gm
from ..engine.host import guider_parts
from ..engine.errors import ConduitError
from .gradient_pass import MaskSettings, PassResult, gradient_pass

log = logging.getLogger(__name__)


@dataclass
class StepMask:
    index: int
    sigma: float
    mask: torch.Tensor  # [B, 1, H, W] bool, latent size, on the CPU
    importance: torch.Tensor  # [B, S, H, W]


def sampler_conds(model, extra_args: dict) -> tuple:
    """(BaseModel, positive, negative) of the running sampler on either host."""
    parts = guider_parts(model, extra_args)
    return parts.base, parts.positive, parts.negative


def fixed_noise(shape: tuple[int, ...], seed: int, like: torch.Tensor) -> torch.Tensor:
    """One noise for every manipulation step, drawn on the CPU so it is the same on every device."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=gen).to(device=like.device, dtype=like.dtype)


def prepare_reference(base_model, samples: torch.Tensor, x: torch.Tensor, node: str) -> torch.Tensor:
    """The reference LATENT in the model's sampling space, at the sampled size and batch."""
    ref = samples.to(device=x.device, dtype=torch.float32)
    if ref.dim() != 4 or ref.shape[1] != x.shape[1]:
        raise ConduitError(node, f"the reference latent has shape {tuple(ref.shape)}, the sampled latent "
                                 f"{tuple(x.shape)}.", "VAE-encode the reference with this model's VAE.")
    if ref.shape[0] not in (1, x.shape[0]):
        raise ConduitError(node, f"the reference has {ref.shape[0]} images, the batch {x.shape[0]}.",
                           "give one reference image, or one per batch item.")
    if tuple(ref.shape[-2:]) != tuple(x.shape[-2:]):
        log.warning("%s: reference latent %dx%d resized to the sampled latent %dx%d", node,
                    ref.shape[-1], ref.shape[-2], x.shape[-1], x.shape[-2])
        ref = gm.resize_latent(ref, tuple(x.shape[-2:]))
    ref = base_model.process_latent_in(ref)
    return ref.expand(x.shape[0], -1, -1, -1).to(x.dtype)


@dataclass
class GradSamRun:
    """Callable sampler function (comfy.samplers.KSAMPLER(run)); keeps the masks of its last run."""
    settings: MaskSettings
    percents: tuple[float, ...]
    reference: torch.Tensor  # raw LATENT samples
    reference_seed: int
    sampler_name: str
    node: str
    masks: list[StepMask] = field(default_factory=list)

    def inner(self):
        import comfy.samplers

        return comfy.samplers.sampler_object(self.sampler_name)

    def steps_for(self, model, sigmas: torch.Tensor) -> list[int]:
        ms = model_sampling_of(model)
        targets = [float(ms.percent_to_sigma(p)) for p in self.percents]
        return gm.manipulation_indices(sigmas.tolist(), targets)

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args if extra_args is not None else {}
        self.masks = []
        inner = self.inner()
        steps = self.steps_for(model, sigmas)
        warn_unused_percents(self.node, self.percents, steps, len(sigmas) - 1)
        if not steps:
            return inner.sampler_function(model, x, sigmas, extra_args=extra_args, callback=callback,
                                          disable=disable, **inner.extra_options)
        base, positive, negative = sampler_conds(model, extra_args)
        if positive is None:
            raise ConduitError(self.node, "the sampler was run without positive conditioning.",
                               "use it with SamplerCustom, or with SamplerCustomAdvanced and a CFG guider.")
        ref = prepare_reference(base, self.reference, x, self.node)
        noise = fixed_noise(tuple(x.shape), self.reference_seed, x)
        start = 0
        for n, m in enumerate(steps):
            x = _segment(inner, model, x, sigmas, start, m, extra_args, callback, disable, n)
            result = gradient_pass(base, positive, negative, x, sigmas[m], extra_args.get("model_options", {}),
                                   self.settings, self.node)
            x = gm.replace_background(x, gm.noised_reference(ref, noise, float(sigmas[m])), result.mask)
            self.masks.append(_record(m, sigmas, result))
            warn_degenerate_mask(self.node, m, result.mask)
            log.info("%s: step %d (sigma %.3f) keeps %.1f%% of the latent as subject", self.node, m,
                     float(sigmas[m]), 100.0 * float(result.mask.float().mean()))
            start = m
        return _segment(inner, model, x, sigmas, start, len(sigmas) - 1, extra_args, callback, disable, len(steps))


def warn_unused_percents(node: str, percents, steps: list[int], total: int) -> None:
    """A percent before the first step or after the last, or two percents on one step, do nothing: say so."""
    if len(steps) < len(percents):
        log.warning("%s: %d of the %d step_percents (%s) land on no step of this %d-step run or share a step; "
                    "the background is replaced at %d step(s). Use percents between 0 and 1 that fall on "
                    "distinct steps.", node, len(percents) - len(steps), len(percents),
                    ", ".join(f"{p:g}" for p in percents), total, len(steps))


def warn_degenerate_mask(node: str, step: int, mask: torch.Tensor) -> None:
    """A mask that keeps everything (e.g. a dilation as large as the latent) replaces no background, and one
    that keeps nothing replaces the subject too."""
    kept = float(mask.float().mean())
    if kept >= 1.0:
        log.warning("%s: at step %d the subject mask covers the whole latent, so none of the reference "
                    "background is kept (a dilation as wide as the latent does this); lower dilation or raise kappa.",
                    node, step)
    elif kept <= 0.0:
        log.warning("%s: at step %d the subject mask is empty, so the whole latent is replaced by the "
                    "reference; lower kappa or check the subject words.", node, step)


def model_sampling_of(model):
    """model_sampling of the BaseModel behind a sampler's model wrapper."""
    return model.inner_model.inner_model.model_sampling


def _record(index: int, sigmas: torch.Tensor, result: PassResult) -> StepMask:
    return StepMask(index, float(sigmas[index]), result.mask.detach().cpu(), result.importance.detach().cpu())


def _segment(inner, model, x, sigmas, start: int, end: int, extra_args: dict, callback, disable, part: int):
    """Run the inner sampler over sigmas[start:end + 1]; later parts get a shifted seed so ancestral noise
    does not repeat, and the callback sees run-wide step numbers."""
    if end <= start:
        return x
    args = dict(extra_args)
    if part and args.get("seed") is not None:
        args["seed"] = int(args["seed"]) + part
    cb = None if callback is None else (lambda d: callback({**d, "i": d["i"] + start}))
    return inner.sampler_function(model, x, sigmas[start:end + 1], extra_args=args, callback=cb, disable=disable,
                                  **inner.extra_options)


def probe_mask(settings: MaskSettings, node: str, out: list):
    """A sampler function that only evaluates the mask at sigmas[0] and returns x unchanged (mask node)."""
    def probe(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args if extra_args is not None else {}
        base, positive, negative = sampler_conds(model, extra_args)
        out.append(gradient_pass(base, positive, negative, x, sigmas[0], extra_args.get("model_options", {}),
                                 settings, node))
        return x
    return probe

