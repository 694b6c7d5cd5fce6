"""Abs-Grad-SAM: cost of a manipulated step (plain step + one gradient pass) and of a 30-step run with the
reference's 3 manipulation steps, both against the same sampler without manipulation (SamplerCustom path)."""
from __future__ import annotations

import torch

from conduit import testing
from conduit.pack import pack_module

from .harness import Row, time_pair

SUBJECT_COLUMNS = ((2,), (4, 5))  # two subjects, one split over two tokens; conditioning is random anyway


def _peak(ctx, fn) -> float | None:
    if ctx.device.type != "cuda":
        return None
    torch.cuda.synchronize(ctx.device)
    torch.cuda.reset_peak_memory_stats(ctx.device)
    fn()
    torch.cuda.synchronize(ctx.device)
    return round(torch.cuda.max_memory_allocated(ctx.device) / 2**20, 1)


def cases(ctx) -> list[Row]:
    import comfy.samplers

    gp = pack_module("patches.gradsam_pass")
    gs = pack_module("patches.gradsam_sampler")
    gm = pack_module("patches.gradsam_math")
    model = ctx.model()
    pos, neg = ctx.cond(1, 0), ctx.cond(1, 1)
    h, w = ctx.latent_hw
    empty = torch.zeros(1, 4, h, w, device=ctx.device)
    reference = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(1))
    settings = gp.MaskSettings(SUBJECT_COLUMNS, ("a", "b"), 77)
    ms = model.model.model_sampling

    def sigmas(steps: int) -> torch.Tensor:
        return comfy.samplers.calculate_sigmas(ms, "normal", steps) if hasattr(comfy.samplers, "calculate_sigmas") \
            else comfy.samplers.calculate_sigmas_scheduler(model.model, "normal", steps)

    def runner(percents):
        run = gs.GradSamRun(settings, tuple(percents), reference, 0, "euler", "bench")
        return comfy.samplers.KSAMPLER(run)

    plain = comfy.samplers.sampler_object("euler")

    def go(sampler, sig):
        return lambda: testing.sample_custom(model, pos, neg, sampler, sig, empty, cfg=5.0)

    rows = []
    # per_step: a short run with exactly one manipulated step; the extra time is that step's extra cost
    short = 4
    sig = sigmas(short)
    one = runner([0.5])
    assert len(one.sampler_function.steps_for(_wrapped(model), sig)) == 1
    b, p = time_pair(go(plain, sig), go(one, sig), ctx.device, ctx.repeats)
    step = b / short
    manipulated = step + max(p - b, 0.0)
    rows.append(ctx.row("gradsam", "per_step", step, manipulated, target=4.0, steps=short, manipulated_steps=1,
                        layers="last", note="manipulated step = plain step + (one-step-run time - plain run time)",
                        peak_mb_plain=_peak(ctx, go(plain, sig)), peak_mb_manipulated=_peak(ctx, go(one, sig))))
    # run30: the reference's three manipulation steps in a 30-step run
    steps = 10 if ctx.quick else 30
    sig = sigmas(steps)
    three = runner(gm.DEFAULT_PERCENTS)
    n = len(three.sampler_function.steps_for(_wrapped(model), sig))
    b, p = time_pair(go(plain, sig), go(three, sig), ctx.device, ctx.repeats)
    rows.append(ctx.row("gradsam", "run30", b, p, target=1.35, steps=steps, manipulated_steps=n, layers="last"))
    if not ctx.quick:
        every = runner(gm.DEFAULT_PERCENTS)
        every.sampler_function.settings = gp.MaskSettings(SUBJECT_COLUMNS, ("a", "b"), 77, layers="all")
        b, p = time_pair(go(plain, sig), go(every, sig), ctx.device, ctx.repeats)
        rows.append(ctx.row("gradsam", "run30,all_layers", b, p, steps=steps, manipulated_steps=n, layers="all",
                            peak_mb_plain=_peak(ctx, go(plain, sig)), peak_mb_manipulated=_peak(ctx, go(every, sig))))
    return rows


class _wrapped:
    """Just enough of a sampler's model wrapper for GradSamRun.steps_for (model.inner_model.inner_model)."""

    def __init__(self, patcher) -> None:
        self.inner_model = type("Guider", (), {"inner_model": patcher.model})()
