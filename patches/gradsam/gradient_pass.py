"""One Abs-Grad-SAM gradient pass: subject importance maps and the subject mask at one noise level.

Objective (docs/gradsam.md): L = sum over the batch of < D_cond, stopgrad(D_cond - D_uncond) >, with D the
model's denoised prediction. One backward pass of L gives dL/dA for the subject columns of the attention
probabilities A of every chosen layer; the importance of a query position is sum over heads and subject
tokens of A * |dL/dA| ("abs") or A * ReLU(dL/dA) ("gradsam").
"""
from __future__ import annotations

import logging
import types
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import gradsam_math as gm
from ..engine.batch import COND, chunk_slices
from ..engine.host import calc_cond_batch
from ..engine.errors import ConduitError
from ..engine.grid import token_grid
from .capture import PassHooks, pass_options
from ..engine.families import family_of_model
from .tail import autograd_ready
from ..engine.layers import AttentionLayer, attention_layers
from ..engine.layer_select import custom_list, named_layers

log = logging.getLogger(__name__)

LAYER_MODES = ("last", "all", "custom")
THRESHOLD_MODES = ("each subject", "all subjects")


@dataclass(frozen=True)
class MaskSettings:
    subjects: tuple[tuple[int, ...], ...]  # token columns per subject
    subject_names: tuple[str, ...]
    own_length: int
    layers: str = "last"  # "last" | "all" | "custom"
    custom_layers: str = ""  # with layers == "custom": e.g. "o5.1, o4", Conduit's layer syntax
    score: str = "abs"
    kappa: float = 0.5
    threshold_over: str = "each subject"
    blur_sigma: float = 1.0
    dilation: int = 3


@dataclass
class PassResult:
    importance: torch.Tensor  # [B, S, H, W], one aggregated map per subject at latent size
    mask: torch.Tensor  # [B, 1, H, W] bool, True = subject (kept), False = background (replaced)
    layers: list[str]


# What a DiT lacks for Abs-Grad-SAM, said in the refusal (the family seam names the model family)
DIT_MISSING = ("Abs-Grad-SAM scores cross-attention maps (image queries x text keys, times their gradient); this "
               "model has no cross-attention: its text enters through joint attention, and Conduit has no "
               "Grad-SAM on joint attention yet.")


def as_patcher(base_model) -> types.SimpleNamespace:
    """attention_layers/model_family read only .model, so a sampler's BaseModel can stand in for a patcher."""
    return types.SimpleNamespace(model=base_model)


def choose_layers(base_model, mode: str, custom: str, node: str) -> list[AttentionLayer]:
    """'last': the last up-block cross-attention at the finest up resolution (the reference's layer); 'all':
    every cross-attention layer; 'custom': the list in `custom`, in Conduit's layer syntax (o5.1, o3-5, m0)."""
    family_of_model(base_model, node, missing=DIT_MISSING)
    cross = [layer for layer in attention_layers(as_patcher(base_model), node) if layer.has_cross]
    if not cross:
        raise ConduitError(node, "this model has no cross-attention layers.", "use an SD1.x, SD2.x or SDXL model.")
    text = custom_list(mode, custom, node)
    if text is not None:
        return named_layers(cross, text, node, "cross-attention", "pick from")
    if mode == "all":
        return cross
    if mode != "last":
        raise ConduitError(node, f"unknown layer choice {mode!r}.", f"use one of {', '.join(LAYER_MODES)}.")
    ups = [layer for layer in cross if layer.block == "output"] or cross
    finest = min(layer.downsample for layer in ups)
    return [[layer for layer in ups if layer.downsample == finest][-1]]


def _objective(hooks: PassHooks, target: torch.Tensor) -> torch.Tensor | None:
    """sum over cond chunks of <D_cond, target>; chunks of a different size (area conds) do not count."""
    total = None
    for out, kinds in hooks.outputs:
        for kind, rows in chunk_slices(out.shape[0], kinds):
            part = out[rows]
            if kind != COND or part.shape != target.shape:
                continue
            term = (part.float() * target).sum()
            total = term if total is None else total + term
    return total


def gradient_pass(base_model, positive, negative, x: torch.Tensor, sigma: torch.Tensor | float,
                  model_options: dict, settings: MaskSettings, node: str) -> PassResult:
    """Run the model once with gradients on the tail from the chosen layers, backward once, build the mask."""
    layers = choose_layers(base_model, settings.layers, settings.custom_layers, node)
    unet = base_model.diffusion_model
    first = min(layers, key=lambda layer: layer.order).key
    hooks = PassHooks(settings.subjects, settings.own_length)
    mo = pass_options(model_options, hooks, [layer.key for layer in layers], first, len(unet.input_blocks))
    latent_hw = tuple(x.shape[-2:])
    batch = x.shape[0]
    tail = family_of_model(base_model, node).blocks_from(unet, first)
    with torch.inference_mode(False), torch.no_grad(), autograd_ready(tail):
        xg = x.detach().clone()
        sg = (torch.as_tensor(sigma, dtype=xg.dtype).flatten()[:1].to(xg.device) * xg.new_ones(batch)).clone()
        try:
            outs = calc_cond_batch(base_model, [positive, negative], xg, sg, mo)
            target = (outs[0].float() - (outs[1] if negative is not None else xg).float()).detach()
            with torch.enable_grad():
                loss = _objective(hooks, target)
                leaves = [r.probs for r in hooks.records]
                if loss is None or not leaves or not loss.requires_grad:
                    raise ConduitError(node, "the gradient pass recorded no subject attention.",
                                       "check that the positive conditioning reaches the chosen layers.")
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        finally:
            torch.set_grad_enabled(False)
        maps = _importance(hooks, grads, settings, latent_hw, batch, x.device)
        del loss, leaves, grads, outs, target
        hooks.records.clear()
        hooks.outputs.clear()
    zeros = torch.zeros(batch, 1, *latent_hw, device=x.device)
    per_subject = [gm.aggregate_maps([maps.get((layer.key, s), zeros) for layer in layers])
                   for s in range(len(settings.subjects))]
    importance = torch.cat(per_subject, dim=1)
    per = settings.threshold_over == "each subject"
    masks = gm.subject_mask(importance, settings.kappa, per, settings.blur_sigma, settings.dilation)
    mask = masks.any(dim=1, keepdim=True)
    flat = gm.flat_items(importance)
    if bool(flat.any()):
        log.warning("%s: no subject signal in %d of %d images at this step; nothing replaced there", node,
                    int(flat.sum()), batch)
        mask[flat.to(mask.device)] = True
    return PassResult(importance, mask, [layer.short for layer in layers])


def _importance(hooks: PassHooks, grads: Sequence[torch.Tensor | None], settings: MaskSettings,
                latent_hw: tuple[int, int], batch: int, device) -> dict:
    """{(layer key, subject): [B, 1, H, W]} summed over every recorded call of that layer."""
    maps: dict = {}
    for rec, grad in zip(hooks.records, grads):
        if grad is None:
            grad = torch.zeros_like(rec.probs)
        n = rec.probs.shape[2]
        hw = token_grid(latent_hw, n)
        for s, cols in enumerate(rec.subject_cols):
            idx = torch.tensor(cols, device=rec.probs.device, dtype=torch.long)
            tok = gm.token_importance(rec.probs.detach().index_select(-1, idx), grad.index_select(-1, idx),
                                      settings.score)
            up = gm.upsample_map(tok, hw, latent_hw).to(device)
            key = (rec.key, s)
            acc = maps.get(key)
            if acc is None:
                acc = torch.zeros(batch, 1, *latent_hw, device=device)
            maps[key] = acc.index_add(0, rec.items.to(device), up)
    return maps
