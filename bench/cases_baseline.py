"""Vanilla sampling against itself (noise floor) and against a no-op attention replace on every layer."""
from __future__ import annotations

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

from .harness import Row, time_pair


def cases(ctx) -> list[Row]:
    import conduit_pack.patches.engine.attention as attention
    import conduit_pack.patches.engine.layers as layers
    base = ctx.model()
    noop = base.clone()
    for layer in layers.attention_layers(noop):
        attention.set_replace(noop, "attn1", layer.key, lambda inner: inner)
    b1, b2 = time_pair(lambda: ctx.sample(base), lambda: ctx.sample(base), ctx.device, ctx.repeats)
    b, p = time_pair(lambda: ctx.sample(base), lambda: ctx.sample(noop), ctx.device, ctx.repeats)
    return [ctx.row("vanilla", "baseline", b1, b2, steps=ctx.steps),
            ctx.row("noop_patch", "attn1_replace_all_layers", b, p, target=1.03, steps=ctx.steps)]
