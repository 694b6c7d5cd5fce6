"""Balanced Style on DiTs: the official SD3.5-Large port's joint-attention processor, as Conduit ops.

Every block of the table gets an op (patches/engine/dit_attention.py: a chained block replace plus an
optimized_attention_override, core hooks only). In a model call that carries reference rows (the marker set by
reference.py's wrapper) the op reads the step's plan and, for its block, applies dit_style_math to the block's
q, k, v before the rest of the attention chain runs; in every other call, and in blocks the plan leaves out, it
passes the call on untouched. A shared block makes two attention calls down the chain: the reference rows with
their own keys (so the reference stays unchanged, see dit_style_math), the targets with the reference's image
tokens appended.
"""
from __future__ import annotations

from typing import Any

import torch

from .dit_style_math import join_rows, split_shared, styled_qkv
from ..engine.dit_attention import JointCall, Op, set_block_op
from ..engine.errors import ConduitError

NODE = "Conduit Balanced Style"


def dit_style_op(key: tuple, marker: str) -> Op:
    def op(call: JointCall) -> torch.Tensor:
        plan = call.options.get(marker)
        if plan is None:
            return call.attend(call.q, call.k, call.v)
        adain_q, adain_k, adain_v, share = plan.joint_flags(key)
        if not (adain_q or adain_k or adain_v or share):
            return call.attend(call.q, call.k, call.v)
        cou = call.options["cond_or_uncond"]
        if not share:
            return call.attend(*styled_qkv(call.q, call.k, call.v, call.image, cou, adain_q, adain_k, adain_v, False))
        refs, targets = split_shared(call.q, call.k, call.v, call.image, cou, adain_q, adain_k, adain_v,
                                     plan.settings.ref_scale)
        return join_rows(call.attend(*refs), call.attend(*targets), len(cou))

    return op


def install_dit_style(model_patcher: Any, table: Any, settings: Any, marker: str) -> None:
    """On an already-cloned patcher: the style op in every block the table lists."""
    if settings.ref_shift != 0.0:
        raise ConduitError(NODE, "reference_attention_shift is not available on DiT models: their joint attention "
                           "runs through other packs' attention overrides, which take no score bias (the official "
                           "SD3.5 port has no shift either).", "set reference_attention_shift to 0; lower "
                           "reference_attention_scale to soften the reference instead.")
    for key in table.layer_keys:
        set_block_op(model_patcher, key[:2], dit_style_op(key, marker), marker)
