"""Cyclic One-Way Diffusion (N = 10 steps, 10 cycles, the official settings) against a plain 10-step run.

unet_evals counts batched UNet calls of the whole COW pipeline (inversion, background inversion, cycles,
final pass); the official code needs about 37 for these settings."""
from __future__ import annotations

import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

from .harness import Row, time_pair

STEPS = 10
REFERENCE_EVALS = 37


def _seed(ctx):
    import conduit_pack.patches.cow.cow_math as cm
    h, w = ctx.latent_hw
    box = cm.snap_box(w * 2, 0, w * 4, h * 4, w * 8, h * 8)  # top centre, half the canvas side
    img = torch.rand(box.h, box.w, 3, generator=torch.Generator().manual_seed(0))
    return cm.seed_canvas(img, None, box, w * 8, h * 8)


def cases(ctx) -> list[Row]:
    import comfy.sample

    import conduit_pack.patches.cow.sampler as cs
    base = ctx.model()
    pos, neg = ctx.cond(1, 0), ctx.cond(1, 1)
    sig = cs.model_sigmas(base, "ddim_uniform", STEPS)
    sig_list = [float(s) for s in sig]
    seed = _seed(ctx)
    g = torch.Generator().manual_seed(1)
    lx, ly, lw, lh = seed.box.latent
    crop = torch.randn(1, 4, lh, lw, generator=g)
    canvas = torch.randn(1, 4, *ctx.latent_hw, generator=g)
    canvas[..., ly:ly + lh, lx:lx + lw] = crop

    def pipeline(model, mode: str, extra: dict):
        latent = crop if mode == "crop alone" else canvas
        reached = STEPS - 7
        inv, _ = cs.invert_condition(model, pos, neg, sig_list, latent, 7.5, reached, mode, seed)
        spec = cs.CowSpec(inv, **extra)
        return comfy.sample.sample_custom(model, torch.zeros_like(canvas), 7.5, cs.cow_sampler(spec), sig, pos, neg,
                                          canvas, disable_pbar=True, seed=0)

    variants = [("n10_c10_crop", "crop alone", {}), ("n10_c10_in_place", "in place", {}),
                ("n10_c10_crop_masked_cfg", "crop alone", {"suppress": ctx.cond(1, 3), "diversity": ctx.cond(1, 4)})]
    rows = []
    counted, calls = cs.counting_clone(base)
    for case, mode, extra in variants:
        calls[0] = 0
        pipeline(counted, mode, extra)
        evals = calls[0]
        b, p = time_pair(lambda: ctx.sample(base, cfg=7.5, steps=STEPS),
                         lambda: pipeline(base, mode, extra), ctx.device, ctx.repeats)
        rows.append(ctx.row("cow", case, b, p, unet_evals=evals, unet_evals_reference=REFERENCE_EVALS,
                            meets_eval_budget=evals <= REFERENCE_EVALS, steps=STEPS, cycles=10,
                            baseline="plain 10-step euler, cfg 7.5"))
    return rows
