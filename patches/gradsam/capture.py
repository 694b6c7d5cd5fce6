"""The hooks of one Abs-Grad-SAM gradient pass: explicit subject attention, a late grad switch, output capture.

All of them live in a transient copy of model_options, so no other step sees them. Gradient recording
starts at the block of the first chosen layer (a block patch turns grad on) and every UNet call starts with
grad off (a chained unet wrapper), so only the tail of the network from that layer on keeps a graph.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from . import gradsam_math as gm
from ..engine.attention import AttentionFn, options_set_replace
from ..engine.batch import COND, chunk_size, rows_of
from ..engine.host import clone_options


@dataclass
class AttentionRecord:
    key: tuple
    items: torch.Tensor  # latent batch index of each recorded row
    probs: torch.Tensor  # [b, heads, N, S] softmax probabilities of the subject columns (grad leaf)
    subject_cols: list[list[int]]  # per subject: indices into the last axis of probs


@dataclass
class PassHooks:
    """Records subject attention at the chosen layers and the UNet outputs of one gradient pass."""
    subjects: Sequence[Sequence[int]]  # token columns of each subject in the prompt's own encoding
    own_length: int  # columns of the prompt's own encoding (ComfyUI may repeat it to a common length)
    records: list[AttentionRecord] = field(default_factory=list)
    outputs: list[tuple[torch.Tensor, list]] = field(default_factory=list)  # (denoised chunk rows, kinds)

    def columns(self, context_length: int) -> tuple[list[int], list[list[int]]]:
        per = [gm.periodic_positions(s, self.own_length, context_length) for s in self.subjects]
        cols = sorted({c for p in per for c in p})
        index = {c: i for i, c in enumerate(cols)}
        return cols, [[index[c] for c in p] for p in per]

    def make_replace(self, key: tuple):
        def make(inner: AttentionFn) -> AttentionFn:
            def replace(q, k, v, extra):
                out = inner(q, k, v, extra)
                return out + self._subject_term(key, q, k, v, extra, out)
            return replace
        return make

    def _subject_term(self, key, q, k, v, extra, out) -> torch.Tensor:
        """Zero in value, but its gradient w.r.t. the recorded probabilities is that of softmax(QK^T)V."""
        batch = q.shape[0]
        kinds = list(extra.get("cond_or_uncond") or [COND])
        rows = rows_of(batch, kinds, COND).to(q.device)
        cols, subject_cols = self.columns(k.shape[1])
        if rows.numel() == 0 or not cols or not torch.is_grad_enabled():
            return torch.zeros_like(out)
        heads = int(extra["n_heads"])
        qr, kr, vr = q[rows], k[rows], v[rows]
        b, n, _ = qr.shape
        qh = qr.reshape(b, n, heads, -1).transpose(1, 2).float()
        kh = kr.reshape(b, kr.shape[1], heads, -1).transpose(1, 2).float()
        vh = vr.reshape(b, vr.shape[1], heads, -1).transpose(1, 2).float()
        with torch.no_grad():
            probs = torch.softmax(qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5, dim=-1)
        idx = torch.tensor(cols, device=q.device)
        leaf = probs.index_select(-1, idx).detach().requires_grad_(True)
        part = leaf @ vh.index_select(2, idx)
        term = (part - part.detach()).transpose(1, 2).reshape(b, n, -1).to(out.dtype)
        self.records.append(AttentionRecord(key, (rows % chunk_size(batch, kinds)).cpu(), leaf, subject_cols))
        return torch.zeros_like(out).index_copy(0, rows, term)

    def wrap_unet(self, previous):
        """Chained unet wrapper: each call starts without grad; its output is captured and handed back
        detached, so ComfyUI's own bookkeeping after the call records nothing."""
        def wrapper(apply_model, args):
            torch.set_grad_enabled(False)
            if previous is not None:
                out = previous(apply_model, args)
            else:
                out = apply_model(args["input"], args["timestep"], **args["c"])
            if out.requires_grad:
                self.outputs.append((out, list(args["cond_or_uncond"])))
            torch.set_grad_enabled(False)
            return out.detach()
        return wrapper


def grad_switch_block(first: tuple, n_input_blocks: int) -> tuple[str, str, int]:
    """(patch name, block, id) of the block patch that runs right before the block holding `first`."""
    block, block_id = first[0], first[1]
    if block == "output":
        return "output_block_patch", "output", block_id
    if block == "middle":
        return "input_block_patch", "input", n_input_blocks - 1
    if block_id < 1:
        raise ValueError("a cross-attention layer in input block 0 is not supported")
    return "input_block_patch", "input", block_id - 1


def pass_options(model_options: dict, hooks: PassHooks, keys: Sequence[tuple], first: tuple,
                 n_input_blocks: int) -> dict:
    """A transient model_options for the gradient pass; the sampler's own options stay untouched."""
    mo = clone_options(model_options)
    for key in keys:
        mo = options_set_replace(mo, "attn2", key, hooks.make_replace(key))
    name, block, block_id = grad_switch_block(first, n_input_blocks)

    def switch_on(*args):
        opts = args[-1]
        if tuple(opts.get("block", ())) == (block, block_id):
            torch.set_grad_enabled(True)
        return args[0] if len(args) == 2 else (args[0], args[1])

    to = mo.setdefault("transformer_options", {})
    patches = dict(to.get("patches", {}))
    patches[name] = list(patches.get(name, [])) + [switch_on]
    to["patches"] = patches
    mo["model_function_wrapper"] = hooks.wrap_unet(mo.get("model_function_wrapper"))
    return mo
