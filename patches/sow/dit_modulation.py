"""SOW's attention modulation on a DiT's joint attention (SD3's joint blocks, Flux's double and single blocks).

The UNet modulation (sow_math) biases self-attention logits among image tokens:
    B[q, k] = w_t * g * ( -lambda_s c(q) (1 - c(k)) + lambda_e w_d(q) r(q) c(k) )   for image keys k.
A joint attention also has text keys (and text queries). Here the bias is that same B on the image-to-image
block, and zero on every text row and text column: each image query's attention to the text keeps its
logits, and text queries are untouched. Softmax ignores a per-row constant only over all keys of the row, so
the suppression term is rewritten with the text columns included:
    -lambda_s c(q) (1 - c(k)) = lambda_s c(q) c(k) - lambda_s c(q)   (image k),   0   (text k)
                              = lambda_s c(q) * [c(k) on image keys, 1 on text keys] + row constant.
So the bias is rank 2 over the joint sequence, f1 g1^T + f2 g2^T with
    f1 = w_t g lambda_s c,        g1 = c on image keys, 1 on text keys,
    f2 = w_t g lambda_e w_d r,    g2 = c on image keys, 0 on text keys,
both zero on text queries; sow_math.augmented_attention adds it through two extra head channels, so any
attention function (another pack's override included) still does the work. Flux's q/k arrive after RoPE and
SD3's after their q/k norms: the extra channels are appended after both, so neither touches them.
"""
from __future__ import annotations

import torch

from . import sow_math as sm
from ..engine.batch import COND, kind_mask
from ..engine.dit_attention import JointCall, Op, image_tokens


def joint_factors(call: JointCall, reg: sm.Regions, scale: torch.Tensor, params: sm.SowParams
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, g), each [B, tokens, 2], of the rank-2 joint bias described above (scale: [B], w_t times gate)."""
    b, n = call.q.shape[0], call.q.shape[2]
    img = call.image
    c = reg.cond.to(call.q)
    f = call.q.new_zeros(b, n, 2)
    g = call.q.new_zeros(b, n, 2)
    f[:, img, 0] = scale.to(f)[:, None] * (params.suppress * c)[None]
    f[:, img, 1] = scale.to(f)[:, None] * (params.enhance * reg.dist_w.to(c) * reg.related.to(c))[None]
    g[:, img, 0] = c[None]
    g[:, :call.text, 0] = 1.0
    g[:, img, 1] = c[None]
    return f, g


def make_dit_op(config, progress) -> Op:
    """The joint-attention op for one SowConfig; progress(options) -> u in [0, 1] or None (off)."""
    p = config.params

    def op(call: JointCall) -> torch.Tensor:
        if p.suppress == 0 and p.enhance == 0:
            return call.attend(call.q, call.k, call.v)  # strength 0: the plain attention, bit for bit
        u = progress(call.options)
        w_t = 0.0 if u is None else sm.time_weight(u, p.time_decay, p.time_cutoff)
        if w_t == 0.0:
            return call.attend(call.q, call.k, call.v)
        reg = config.regions(call.grid, call.q.device, call.q.dtype)
        if not reg.active:
            return call.attend(call.q, call.k, call.v)
        b, heads, n, d = call.q.shape
        scale = torch.full((b,), w_t, device=call.q.device, dtype=torch.float32)
        kinds = call.options.get("cond_or_uncond")
        if config.cond_only and kinds:
            scale = scale * kind_mask(b, kinds, COND).to(scale)
        if p.threshold > 0 and reg.near.numel() and p.enhance != 0:
            qi, ki = image_tokens(call.q, call), image_tokens(call.k, call)
            scale = scale * sm.gate(sm.indicator(qi, ki, heads, reg.near, reg.cond), p.threshold, p.gate)
        if not bool((scale != 0).any()):
            return call.attend(call.q, call.k, call.v)
        f, g = joint_factors(call, reg, scale, p)

        def flat(x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).reshape(b, n, heads * x.shape[-1])

        def attend(q2: torch.Tensor, k2: torch.Tensor, v2: torch.Tensor, d2: int) -> torch.Tensor:
            def split(x: torch.Tensor) -> torch.Tensor:
                return x.view(b, n, heads, d2).transpose(1, 2)
            return call.attend(split(q2), split(k2), split(v2))

        return sm.augmented_attention(flat(call.q), flat(call.k), flat(call.v), heads, f, g, attend)

    return op
