"""Abs-Grad-SAM: cost of a manipulated step (plain step + one gradient pass) and of a 30-step run with the
reference's 3 manipulation steps, both against the same sampler without manipulation (SamplerCustom path)."""
from __future__ import annotations

import statistics
import time

import torch

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack for the imports below)

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


class _CpuClock:
    """Process CPU seconds of each call besides the harness's wall clock: on a shared CPU box other
    processes inflate wall times at random, CPU time of this process much less."""

    def __init__(self) -> None:
        self.runs: list[float] = []

    def wrap(self, fn):
        def timed():
            t = time.process_time()
            out = fn()
            self.runs.append(time.process_time() - t)
            return out
        return timed

    def median(self) -> float:
        return statistics.median(self.runs[1:] or self.runs)  # the first call is the harness's warm-up


def _pair(ctx, base_fn, patched_fn):
    cb, cp = _CpuClock(), _CpuClock()
    b, p = time_pair(cb.wrap(base_fn), cp.wrap(patched_fn), ctx.device, ctx.repeats)
    return b, p, cb.median(), cp.median()


def _cpu_extra(ctx, b: float, p: float) -> dict:
    if ctx.device.type == "cuda":
        return {}
    return {"cpu_s_baseline": round(b, 4), "cpu_s_patched": round(p, 4), "cpu_ratio": round(p / b, 4)}


def cases(ctx) -> list[Row]:
    import comfy.samplers

    import conduit_pack.patches.gradsam.gradient_pass as gp
    import conduit_pack.patches.gradsam.sampler as gs
    import conduit_pack.patches.gradsam.gradsam_math as gm
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
    b, p, cb, cp = _pair(ctx, go(plain, sig), go(one, sig))
    step, cstep = b / short, cb / short
    manipulated, cmanip = step + max(p - b, 0.0), cstep + max(cp - cb, 0.0)
    rows.append(ctx.row("gradsam", "per_step", step, manipulated, target=4.0, steps=short, manipulated_steps=1,
                        layers="last", note="manipulated step = plain step + (one-step-run time - plain run time)",
                        peak_mb_plain=_peak(ctx, go(plain, sig)), peak_mb_manipulated=_peak(ctx, go(one, sig)),
                        **_cpu_extra(ctx, cstep, cmanip)))
    # run30: the reference's three manipulation steps in a 30-step run
    steps = 30
    sig = sigmas(steps)
    three = runner(gm.DEFAULT_PERCENTS)
    n = len(three.sampler_function.steps_for(_wrapped(model), sig))
    b, p, cb, cp = _pair(ctx, go(plain, sig), go(three, sig))
    rows.append(ctx.row("gradsam", "run30", b, p, target=1.35, steps=steps, manipulated_steps=n, layers="last",
                        **_cpu_extra(ctx, cb, cp)))
    # all layers: the tail copy is nearly the whole UNet, too much beside a full-size fp32 SDXL on a CPU box
    if not ctx.quick and (ctx.topology == "tiny" or ctx.device.type == "cuda"):
        every = runner(gm.DEFAULT_PERCENTS)
        every.sampler_function.settings = gp.MaskSettings(SUBJECT_COLUMNS, ("a", "b"), 77, layers="all")
        b, p, cb, cp = _pair(ctx, go(plain, sig), go(every, sig))
        rows.append(ctx.row("gradsam", "run30,all_layers", b, p, steps=steps, manipulated_steps=n, layers="all",
                            peak_mb_plain=_peak(ctx, go(plain, sig)), peak_mb_manipulated=_peak(ctx, go(every, sig)),
                            **_cpu_extra(ctx, cb, cp)))
    return rows


class _wrapped:
    """Just enough of a sampler's model wrapper for GradSamRun.steps_for (model.inner_model.inner_model)."""

    def __init__(self, patcher) -> None:
        self.inner_model = type("Guider", (), {"inner_model": patcher.model})()
