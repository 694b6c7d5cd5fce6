"""Smoothed Energy Guidance against vanilla CFG sampling, and finite against infinite blur.

Besides the harness's wall clock, each row carries this process's CPU seconds (median): on a shared CPU box
other processes inflate wall times at random, the process's own CPU time much less.
"""
from __future__ import annotations

import statistics
import time

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

from .harness import Row, time_pair
from .meta_unet import flops

INF = -1.0


def _timed_pair(ctx, base, patched) -> tuple[float, float, dict]:
    cpu: dict[str, list[float]] = {"b": [], "p": []}

    def clocked(fn, slot):
        def run():
            t = time.process_time()
            fn()
            cpu[slot].append(time.process_time() - t)
        return run

    b, p = time_pair(clocked(base, "b"), clocked(patched, "p"), ctx.device, ctx.repeats)
    if ctx.device.type == "cuda":
        return b, p, {}
    cb, cp = (statistics.median(v[1:] or v) for v in (cpu["b"], cpu["p"]))  # [0] is the warm-up
    return b, p, {"cpu_s_baseline": round(cb, 4), "cpu_s_patched": round(cp, 4), "cpu_ratio": round(cp / cb, 4)}


def _flop_ratio(ctx, base, patched, cfg: float) -> float:
    """FLOPs of one sampling step, patched over vanilla: deterministic where the clock is noisy."""
    b, p = (flops(lambda m=model: ctx.sample(m, cfg=cfg, steps=1)) for model in (base, patched))
    return round(p / b, 4)


def cases(ctx) -> list[Row]:
    import conduit_pack.patches.seg.guidance as seg
    base = ctx.model()

    def patched(sigma: float, share: bool = True):
        return seg.apply_seg(base, seg.SegSettings(scale=3.0, sigma=sigma, layers="middle", share_prefix=share))

    inf_m, ten_m = patched(INF), patched(10.0)
    plan = [("sigma=inf,middle", base, inf_m, 5.0, dict(target=1.45, stretch_target=1.3)),
            ("sigma=10,middle", base, ten_m, 5.0, {}),
            ("finite_vs_inf:sigma=10_over_sigma=inf,middle", inf_m, ten_m, 5.0, dict(target=1.05))]
    if not ctx.quick:
        plan += [("sigma=inf,middle,separate_pass", base, patched(INF, share=False), 5.0,
                  dict(note="no prefix sharing: one extra UNet pass per step, as the anchors")),
                 ("sigma=inf,middle,cfg=1", base, inf_m, 1.0, {})]
    rows = []
    for case, b_model, p_model, cfg, extra in plan:
        b, p, cpu = _timed_pair(ctx, lambda m=b_model, c=cfg: ctx.sample(m, cfg=c),
                                lambda m=p_model, c=cfg: ctx.sample(m, cfg=c))
        flops = _flop_ratio(ctx, b_model, p_model, cfg)
        rows.append(ctx.row("seg", case, b, p, steps=ctx.steps, cfg=cfg, flop_ratio=flops, **extra, **cpu))
    return rows
