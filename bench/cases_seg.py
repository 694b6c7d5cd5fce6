"""Smoothed Energy Guidance against vanilla CFG sampling, and finite against infinite blur."""
from __future__ import annotations

from conduit.pack import pack_module

from .harness import Row, time_pair

INF = -1.0


def cases(ctx) -> list[Row]:
    seg = pack_module("patches.seg")
    base = ctx.model()

    def patched(sigma: float, layers: str = "middle", share: bool = True):
        return seg.apply_seg(base, seg.SegSettings(scale=3.0, sigma=sigma, layers=layers, share_prefix=share))

    inf_m, ten_m, sep_m = patched(INF), patched(10.0), patched(INF, share=False)
    rows = []
    b, p = time_pair(lambda: ctx.sample(base), lambda: ctx.sample(inf_m), ctx.device, ctx.repeats)
    rows.append(ctx.row("seg", "sigma=inf,middle", b, p, target=1.45, stretch_target=1.3, cfg=5.0,
                        steps=ctx.steps))
    b, p = time_pair(lambda: ctx.sample(base), lambda: ctx.sample(ten_m), ctx.device, ctx.repeats)
    rows.append(ctx.row("seg", "sigma=10,middle", b, p, cfg=5.0, steps=ctx.steps))
    b, p = time_pair(lambda: ctx.sample(inf_m), lambda: ctx.sample(ten_m), ctx.device, ctx.repeats)
    rows.append(ctx.row("seg", "finite_vs_inf:sigma=10_over_sigma=inf,middle", b, p, target=1.05, cfg=5.0,
                        steps=ctx.steps))
    if not ctx.quick:
        b, p = time_pair(lambda: ctx.sample(base), lambda: ctx.sample(sep_m), ctx.device, ctx.repeats)
        rows.append(ctx.row("seg", "sigma=inf,middle,separate_pass", b, p, cfg=5.0, steps=ctx.steps,
                            note="no prefix sharing: the anchors' extra pass"))
        b, p = time_pair(lambda: ctx.sample(base, cfg=1.0), lambda: ctx.sample(inf_m, cfg=1.0), ctx.device,
                         ctx.repeats)
        rows.append(ctx.row("seg", "sigma=inf,middle,cfg=1", b, p, cfg=1.0, steps=ctx.steps))
    return rows
