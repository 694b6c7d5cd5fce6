"""Balanced Style on DiTs: exact FLOPs per step on the full SD3.5-Large topology with the shipped table (meta
device), and the wall clock against vanilla sampling on the tiny 38-block SD3.5-Large topology, side by side.

FLOP rows carry counts in baseline_s / patched_s (unit = "FLOPs"): one CFG step at 1024x1024, vanilla against
Balanced Style, the patched count being the mean over 5 evenly spaced table rows (the worst is in `worst`).
The issue's target: <= 2.1x at batch 1. Skipped on hosts without SD3 classes (the pinned 2024 host).
"""
from __future__ import annotations

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

from .harness import Row, time_pair

TARGET = 2.1


def _flop_rows(ctx) -> list[Row]:
    from .dit_flops import meta_dit_attention
    from .dit_style_flops import counts

    rows = []
    for strength in (0.43, 28 / 38):
        with meta_dit_attention():
            vanilla, styled, shared = counts(128, 1, strength, 5)
        rows.append(Row("balanced_style_dit", f"sd35l_full,batch1,lambda={strength:.3g}", float(vanilla),
                        sum(styled) / len(styled), "meta device (FLOP count)", ctx.host, TARGET,
                        {"unit": "FLOPs", "model": "SD3.5 Large", "topology": "sd35l_full", "latent": "1024x1024",
                         "batch": 1, "style_strength": round(strength, 4), "table": "sd35l_style_qkv",
                         "worst": round(max(styled) / vanilla, 4), "shared_blocks_mean": shared,
                         "note": "mean over 5 evenly spaced table rows"}))
    return rows


def _wall_rows(ctx) -> list[Row]:
    import comfy.sample
    import torch

    import conduit_pack.patches.conditional_balance.reference as rb
    import conduit_pack.patches.conditional_balance.style as bs
    import conduit_pack.patches.tables.table as tables
    from conduit import testing
    from conduit_pack.toyworld import dit_build

    base = dit_build.build_dit("sd35l_keys", device=ctx.device)
    ref = torch.randn(1, dit_build.LATENT_CHANNELS, 32, 32, generator=torch.Generator().manual_seed(0))
    settings = bs.StyleSettings(0.43)
    styled = bs.apply_balanced_style(base, tables.builtin_table("sd35l_style_qkv", "bench"),
                                     rb.NoisedReference(ref, 0), settings)
    pos = dit_build.dit_conditioning("sd35l_keys", 1, seed=10, tokens=77)
    neg = dit_build.dit_conditioning("sd35l_keys", 1, seed=11, tokens=77)
    latent = torch.zeros(1, dit_build.LATENT_CHANNELS, 32, 32)
    noise = testing.noise_for(tuple(latent.shape))

    def go(model):
        return comfy.sample.sample(model, noise, ctx.steps, 4.0, "euler", "simple", pos, neg, latent, seed=0,
                                   disable_pbar=True)

    b, p = time_pair(lambda: go(base), lambda: go(styled), ctx.device, ctx.repeats)
    return [ctx.row("balanced_style_dit", "tiny_sd35l_keys,batch1,lambda=0.43", b, p, batch=1, steps=ctx.steps,
                    style_strength=0.43, topology="tiny_sd35l_keys", latent="256x256",
                    note="38 joint blocks at width 64: attention is most of the work, so this is no SD3.5 estimate")]


def cases(ctx) -> list[Row]:
    from conduit_pack.toyworld import dit_build

    if ctx.topology != "tiny" or not dit_build.dit_available()[0]:
        return []
    return _wall_rows(ctx) + ([] if ctx.quick else _flop_rows(ctx))
