"""Joint-attention patches on DiTs (SD3's MMDiT, Flux) through core hooks only, chained to other packs'.

A DiT block computes one attention over the joint sequence [text tokens, image tokens (, reference tokens)].
Conduit changes that attention in chosen blocks with two core hooks:
- a `patches_replace["dit"][(block, id)]` block replace, which runs the block with copied transformer options
  that carry a chained `optimized_attention_override` (ComfyUI's wrapped attention calls it with the very
  q, k, v of the block: for Flux after RoPE);
- a layout apply-model wrapper that records, per model call, how many text tokens lead each sequence and the
  image-token grid (from the latent and the patch size, any aspect ratio), since 2025-era hosts tell neither
  to an attention function.

Chaining: a block replace that another pack put at the same key before Conduit is wrapped (it still runs,
with Conduit's override in its options); an override that another pack put in the options is called by
Conduit's in place of plain attention. A block replace that another pack installs later would overwrite
Conduit's: the layout wrapper sees that at call time and rebuilds the chain around it for that call (an extra
pass's block replace such as core SkipLayerGuidanceDiT's skip never calls the block, so the rebuilt chain
correctly does nothing there).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

LAYOUT_KEY = "conduit_dit_layout"  # transformer option: the call's JointLayout
INSTALLS_KEY = "conduit_dit_installs"  # transformer option: [(key, token, op)] Conduit installed permanently
OVERRIDE = "optimized_attention_override"
TAG = "_conduit_dit"


@dataclass(frozen=True)
class JointLayout:
    """Where the tokens of one model call's joint sequences sit."""
    text: int  # text tokens at the front of every joint sequence
    grid: tuple[int, int]  # image-token grid (rows, columns) of the main latent

    @property
    def image(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass
class JointCall:
    """One attention call inside a patched block. q, k, v are (batch, heads, tokens, head size) views,
    whatever layout the block passed; `attend` runs the rest of the chain on (modified) tensors."""
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    key: tuple  # (block, id)
    text: int  # text tokens at the front of this sequence (0 for an image-only attention)
    grid: tuple[int, int]
    options: dict  # the call's transformer options (cond_or_uncond, sigmas, ...)
    _attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

    @property
    def image(self) -> slice:
        """The main image's tokens in the sequence (reference-latent tokens after them are left alone)."""
        return slice(self.text, self.text + self.grid[0] * self.grid[1])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._attend(q, k, v)


Op = Callable[[JointCall], torch.Tensor]  # returns what the attention call returns: (batch, tokens, heads*size)


def _split_heads(x: torch.Tensor, heads: int, skip_reshape: bool) -> torch.Tensor:
    if skip_reshape:
        return x
    # (batch, tokens, heads*size), or (batch, tokens, heads, size) as MMDiT passes v
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor, skip_reshape: bool) -> torch.Tensor:
    if skip_reshape:
        return x
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def make_override(op: Op, key: tuple, previous: Callable | None) -> Callable:
    """An optimized_attention_override that applies op to the joint attention calls of block `key` and passes
    every other call (and op's own attention) to the previous override or plain attention."""

    def override(func, *args, **kwargs):
        inner = func if previous is None else (lambda *a, **kw: previous(func, *a, **kw))
        opts = kwargs.get("transformer_options") or {}
        layout: JointLayout | None = opts.get(LAYOUT_KEY)
        # blocks pass heads positionally (Flux) or by keyword (MMDiT)
        call_args, call_kwargs = list(args), dict(kwargs)
        if len(call_args) == 3 and "heads" in call_kwargs:
            call_args.append(call_kwargs.pop("heads"))
        if layout is None or len(call_args) < 4:
            return inner(*args, **kwargs)
        q, k, v, heads = call_args[:4]
        if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
            return inner(*args, **kwargs)
        skip = bool(kwargs.get("skip_reshape", False))
        qh = _split_heads(q, heads, skip)
        tokens = qh.shape[2]
        if tokens >= layout.text + layout.image:
            text = layout.text
        elif tokens == layout.image:  # an image-only attention (SD3.5 Medium's second one)
            text = 0
        else:
            return inner(*args, **kwargs)
        if k.shape[-2 if skip else 1] != tokens:
            return inner(*args, **kwargs)

        def attend(q2: torch.Tensor, k2: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
            return inner(_merge_heads(q2, skip), _merge_heads(k2, skip), _merge_heads(v2, skip), heads,
                         *call_args[4:], **call_kwargs)

        return op(JointCall(qh, _split_heads(k, heads, skip), _split_heads(v, heads, skip), key, text,
                            layout.grid, opts, attend))

    return override


def block_replace(op: Op, key: tuple, inner: Callable | None, token: str | None = None) -> Callable:
    """A patches_replace["dit"] function for block `key`: runs `inner` (another pack's block replace) or the
    original block with op's override chained into the block's transformer options."""

    def replace(args: dict, extra: dict) -> dict:
        opts = dict(args.get("transformer_options") or {})
        opts[OVERRIDE] = make_override(op, key, opts.get(OVERRIDE))
        new_args = {**args, "transformer_options": opts}
        if inner is not None:
            return inner(new_args, extra)
        return extra["original_block"](new_args)

    setattr(replace, TAG, (token, inner))
    return replace


def _chain_has(fn: Callable | None, token: str) -> bool:
    seen = 0
    while fn is not None and seen < 64:
        tag = getattr(fn, TAG, None)
        if tag is None:
            return False
        if tag[0] == token:
            return True
        fn = tag[1]
        seen += 1
    return False


def dit_slot(options: dict) -> dict:
    return options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})


def options_with_block(model_options: dict, key: tuple, op: Op) -> dict:
    """A copied model_options for one extra pass, with op chained at block `key` (around what sits there)."""
    from .host import options_with_replace

    fn = block_replace(op, key, dit_slot(model_options).get(key))
    return options_with_replace(model_options, fn, "dit", key)


def set_block_op(model_patcher: Any, key: tuple, op: Op, token: str) -> None:
    """On an already-cloned ModelPatcher: op in block `key` for every call, chained around what sits there,
    recorded so that a block replace another pack installs later gets wrapped at call time."""
    inner = dit_slot(model_patcher.model_options).get(key)
    model_patcher.set_model_patch_replace(block_replace(op, key, inner, token), "dit", key[0], key[1])
    to = model_patcher.model_options.setdefault("transformer_options", {})
    to[INSTALLS_KEY] = [*to.get(INSTALLS_KEY, []), (key, token, op)]
    install_layout(model_patcher)


def _rechain(options: dict) -> dict:
    """The call's options with each recorded Conduit op re-wrapped around a block replace that displaced it."""
    installs = options.get(INSTALLS_KEY)
    if not installs:
        return options
    slot = options.get("patches_replace", {}).get("dit", {})
    changed = None
    for key, token, op in installs:
        current = (changed or slot).get(key)
        if not _chain_has(current, token):
            changed = dict(changed or slot)
            changed[key] = block_replace(op, key, current, token)
    if changed is None:
        return options
    return {**options, "patches_replace": {**options.get("patches_replace", {}), "dit": changed}}


def call_layout(model: Any, x: torch.Tensor, c: dict) -> JointLayout:
    from .families import family_of_model

    dit = model.diffusion_model
    family = family_of_model(model, "Conduit", ("dit",))
    p = family.patch_size(dit)
    context = c.get("c_crossattn")
    text = family.text_tokens(dit, 0 if context is None else context.shape[1])
    return JointLayout(text, (-(-x.shape[-2] // p), -(-x.shape[-1] // p)))


def _layout_call(call: Any) -> torch.Tensor:
    opts = dict(call.options)
    opts[LAYOUT_KEY] = call_layout(call.model, call.x, call.c)
    call.c = {**call.c, "transformer_options": _rechain(opts)}
    return call.proceed()


def install_layout(model_patcher: Any) -> None:
    """Once per (cloned) model: the apply-model wrapper that records each call's JointLayout."""
    from .host import has_apply_wrapper, install_apply_wrapper

    if not has_apply_wrapper(model_patcher, LAYOUT_KEY):
        install_apply_wrapper(model_patcher, LAYOUT_KEY, _layout_call)


def image_tokens(x: torch.Tensor, call: JointCall) -> torch.Tensor:
    """(batch, heads, tokens, size) -> the main image's tokens as (batch, tokens, heads*size) for grid math."""
    img = x[:, :, call.image]
    b, h, n, d = img.shape
    return img.transpose(1, 2).reshape(b, n, h * d)


def with_image_tokens(x: torch.Tensor, call: JointCall, tokens: torch.Tensor) -> torch.Tensor:
    """x with the main image's tokens replaced by `tokens` (batch, tokens, heads*size)."""
    b, h, n, d = x[:, :, call.image].shape
    img = tokens.reshape(b, n, h, d).transpose(1, 2).to(x.dtype)
    return torch.cat([x[:, :, :call.text], img, x[:, :, call.image.stop:]], dim=2)
