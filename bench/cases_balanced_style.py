"""Balanced style injection (Conditional Balance lambda_S) against vanilla sampling of the same batch.

The reference runs through the UNet with the images (one extra row per cond/uncond chunk), so batch 1 pays
about twice the work and batch 4 about 5/4 of it."""
from __future__ import annotations

import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

from .harness import Row, time_pair


def style_table(model):
    """The shipped SDXL table on the full topology; on the tiny topology a synthetic table of its 8 layers."""
    import conduit_pack.patches.tables.table as tables
    import conduit_pack.patches.engine.layers as layers
    keys = [l.key for l in layers.attention_layers(model)]
    if len(keys) == 70:
        return tables.table_for_family("sdxl", "style_qk", "bench")
    g = torch.Generator().manual_seed(0)
    scores = {f: torch.rand(3, len(keys), generator=g, dtype=torch.float64) for f in ("q", "k")}
    return tables.SensitivityTable("sdxl", "style", keys, [900, 500, 100], scores)


def cases(ctx) -> list[Row]:
    import conduit_pack.patches.conditional_balance.style as bs
    import conduit_pack.patches.conditional_balance.reference as rb
    base = ctx.model()
    h, w = ctx.latent_hw
    ref = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(0))
    settings = bs.StyleSettings(0.43)
    styled = bs.apply_balanced_style(base, style_table(base), rb.NoisedReference(ref, 0), settings)
    rows = []
    for case, batch, target in (("batch1", 1, 2.1), ("batch4", 4, 1.35)):
        b, p = time_pair(lambda: ctx.sample(base, batch=batch), lambda: ctx.sample(styled, batch=batch),
                         ctx.device, ctx.repeats)
        rows.append(ctx.row("balanced_style", case, b, p, target=target, batch=batch, steps=ctx.steps,
                            style_strength=settings.strength))
    return rows
