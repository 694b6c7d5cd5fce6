"""SOW attention modulation on every self-attention layer against unmodulated sampling (target <= 1.15x),
in plain sampling (modulated at every step) and inside the COW sampler (modulated in cycles)."""
from __future__ import annotations

import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

from .cases_cow import STEPS, _seed
from .harness import Row, time_pair

TARGET = 1.15


def cases(ctx) -> list[Row]:
    import comfy.sample

    import conduit_pack.patches.sow.sow_math as sm
    import conduit_pack.patches.sow.modulation as sa
    import conduit_pack.patches.cow.sampler as cs
    base = ctx.model()
    seed = _seed(ctx)
    related = sm.box_mask({"x": 0.15, "y": 0.3, "w": 0.7, "h": 0.7}, ctx.latent_hw)
    config = sa.SowConfig(sm.SowParams(), seed.canvas_latent_mask, related, cycles_only=True)
    patched = sa.apply_sow(base, config, "all", "bench")
    rows = []
    b, p = time_pair(lambda: ctx.sample(base), lambda: ctx.sample(patched), ctx.device, ctx.repeats)
    rows.append(ctx.row("sow", "plain_sampling_all_layers", b, p, target=TARGET, steps=ctx.steps,
                        indicator_threshold=config.params.threshold))

    pos, neg = ctx.cond(1, 0), ctx.cond(1, 1)
    sig = cs.model_sigmas(base, "ddim_uniform", STEPS)
    g = torch.Generator().manual_seed(1)
    canvas = torch.randn(1, 4, *ctx.latent_hw, generator=g)
    inv, _ = cs.invert_condition(base, pos, neg, [float(s) for s in sig], canvas, 7.5, STEPS - 7, "in place", seed)

    def cow(model):
        spec = cs.CowSpec(inv, cycles=3)
        return comfy.sample.sample_custom(model, torch.zeros_like(canvas), 7.5, cs.cow_sampler(spec), sig, pos, neg,
                                          canvas, disable_pbar=True, seed=0)
    b, p = time_pair(lambda: cow(base), lambda: cow(patched), ctx.device, ctx.repeats)
    rows.append(ctx.row("sow", "in_cow_cycles_all_layers", b, p, target=TARGET, steps=STEPS, cycles=3))
    return rows
