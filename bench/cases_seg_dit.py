"""SEG on DiTs: exact FLOPs per step on the full SD3.5-Large and Flux-dev topologies (meta device), and the
wall clock of SEG against vanilla sampling on the tiny SD3 and Flux models, side by side.

FLOP rows carry counts in baseline_s / patched_s (marked unit = "FLOPs"): one sampling step's model work,
vanilla against SEG, at 1024x1024. The issue's targets: <= 1.5x at cfg > 1, <= 2.0x for Flux at cfg 1.
Skipped on hosts without SD3/Flux classes (the pinned 2024 host).
"""
from __future__ import annotations

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

from .harness import Row, time_pair
from .meta_unet import flops

TARGETS = {"> 1": 1.5, "= 1": 2.0}


def _flop_rows(ctx) -> list[Row]:
    import conduit_pack.patches.seg.guidance as seg

    from .dit_flops import TOPOLOGIES, counts, meta_dit_attention

    rows = []
    for name, label_model in TOPOLOGIES.items():
        settings = seg.SegSettings(scale=3.0, sigma=-1.0)
        with meta_dit_attention():
            found = counts(name, 128, settings)
        for label, vanilla, forked, separate in found:
            for case, patched, note in (("forked", forked, "prefix shared up to the first blurred block"),
                                        ("separate_pass", separate, "one extra model pass per step")):
                rows.append(Row("seg_dit", f"{name},cfg{label.replace(' ', '')},sigma=inf,auto,{case}",
                                float(vanilla), float(patched), "meta device (FLOP count)", ctx.host,
                                TARGETS[label] if case == "forked" else None,
                                {"unit": "FLOPs", "model": label_model, "topology": name, "latent": "1024x1024",
                                 "note": note}))
    return rows


def _wall_rows(ctx) -> list[Row]:
    import comfy.sample
    import torch

    import conduit_pack.patches.seg.guidance as seg
    from conduit import testing
    from conduit_pack.toyworld import dit_build

    rows = []
    for name, cfg in (("flux", 1.0), ("sd3", 4.0)):
        base = dit_build.build_dit(name, device=ctx.device)
        patched = seg.apply_seg(base, seg.SegSettings(scale=3.0, sigma=-1.0))
        pos = dit_build.dit_conditioning(name, 1, seed=10, tokens=77)
        neg = dit_build.dit_conditioning(name, 1, seed=11, tokens=77)
        latent = torch.zeros(1, dit_build.LATENT_CHANNELS, 32, 32)
        noise = testing.noise_for(tuple(latent.shape))

        def go(model):
            return comfy.sample.sample(model, noise, ctx.steps, cfg, "euler", "simple", pos, neg, latent,
                                       seed=0, disable_pbar=True)

        b, p = time_pair(lambda: go(base), lambda: go(patched), ctx.device, ctx.repeats)
        flop_ratio = round(flops(lambda: go(patched)) / flops(lambda: go(base)), 4)
        rows.append(ctx.row("seg_dit", f"tiny_{name},cfg={cfg:g},sigma=inf,auto", b, p, steps=ctx.steps,
                            topology=f"tiny_{name}", latent="256x256", flop_ratio=flop_ratio))
    return rows


def cases(ctx) -> list[Row]:
    from conduit_pack.toyworld import dit_build

    if ctx.topology != "tiny" or not dit_build.dit_available()[0]:
        return []
    return _wall_rows(ctx) + ([] if ctx.quick else _flop_rows(ctx))
