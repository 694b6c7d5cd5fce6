"""Smoothed Energy Guidance hook builder: a post-CFG function that adds scale * (cond - cond_blurred).

cond_blurred is the positive prompt's x0 prediction with blurred self-attention queries on the chosen
layers. It comes either from the prefix-shared fork of the main pass (patches/seg_fork.py) or, when that is
not possible, from an ordinary extra pass through compat.calc_cond_batch with a transient attn1 replace
chained to whatever already sits at each layer.
"""
from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass

import torch

from . import seg_math
from ..engine.attention import options_set_replace
from ..engine.errors import ConduitError
from ..engine.layers import AttentionLayer, attention_layers, model_family
from .blur_attention import blurred_attention
from .dit_blur import dit_blur_op
from ..engine.dit_attention import install_layout, options_with_block
from ..engine.host import install_apply_wrapper
from .fork import PrefixFork
from ..engine.layer_select import default_layers, select_layers

log = logging.getLogger(__name__)

NODE = "Conduit Smoothed Energy Guidance"


@dataclass(frozen=True)
class SegSettings:
    scale: float = 3.0
    sigma: float = math.inf  # negative, inf or > 9999 = infinite blur (the queries' spatial mean)
    start_percent: float = 0.0
    end_percent: float = 1.0
    rescale: float = 0.0
    layers: str = "auto"  # "auto" (the family default), a preset, or "custom" to use custom_layers
    custom_layers: str = ""
    share_prefix: bool = True


def validate(s: SegSettings, node: str = NODE) -> None:
    if not math.isfinite(s.scale):
        raise ConduitError(node, f"scale must be a finite number, got {s.scale}.", "use e.g. 3.0 (the paper's value).")
    if math.isnan(s.sigma):
        raise ConduitError(node, "blur_sigma is NaN.", "use -1 for infinite blur or a value >= 0.")
    if not (0.0 <= s.start_percent <= s.end_percent <= 1.0):
        raise ConduitError(node, f"start_percent {s.start_percent} / end_percent {s.end_percent} is not a range "
                                 "inside 0..1.", "use 0 <= start_percent <= end_percent <= 1.")
    if not (0.0 <= s.rescale <= 1.0):
        raise ConduitError(node, f"rescale {s.rescale} is outside 0..1.", "use 0 (off) to 1 (full rescale).")


class _Window:
    """Whether SEG acts at a sigma: ComfyUI's percent_to_sigma on the model's own sampling."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self._bounds: dict[int, tuple[float, float]] = {}

    def contains(self, model_sampling, sigma: float) -> bool:
        from ..engine.steps import percent_to_sigma

        b = self._bounds.get(id(model_sampling))
        if b is None:
            b = (percent_to_sigma(model_sampling, self.start), percent_to_sigma(model_sampling, self.end))
            self._bounds = {id(model_sampling): b}
        hi, lo = b
        return lo * (1 - 1e-5) <= sigma <= hi * (1 + 1e-5)


def fork_block(layers: list[AttentionLayer]) -> tuple[str, int] | None:
    """(block, id) where the prefix-shared fork widens the batch: the first blurred layer's block, when it is
    in the middle or output half of a UNet (an input-half fork would also need the skip connections widened),
    or any block of a DiT (which has no skip connections)."""
    first = min(layers, key=lambda layer: layer.order)
    return (first.block, first.block_id) if first.block in ("middle", "output") or first.is_dit else None


KINDS = ("unet", "dit")


def seg_layers(model_patcher, settings: SegSettings, node: str = NODE) -> list[AttentionLayer]:
    """The layers SEG blurs: "auto" is the family's default (a UNet's mid block, documented DiT blocks)."""
    from ..engine.families import family_of

    family = family_of(model_patcher, node, KINDS)
    layers = attention_layers(model_patcher, node, KINDS)
    if settings.layers == "auto":
        if settings.custom_layers.strip():
            select_layers(layers, "auto", settings.custom_layers, node)  # the "custom_layers is set" error
        return default_layers(layers, family.seg_default, node)
    return select_layers(layers, settings.layers, settings.custom_layers, node)


def apply_seg(model_patcher, settings: SegSettings, node: str = NODE):
    """A patched clone of model_patcher; the original is left untouched."""
    model_family(model_patcher, node, KINDS)
    validate(settings, node)
    layers = seg_layers(model_patcher, settings, node)
    dit = layers[0].is_dit
    sigma = -1.0 if seg_math.is_infinite(settings.sigma) else float(settings.sigma)
    scale, amount = float(settings.scale), float(settings.rescale)
    window = _Window(settings.start_percent, settings.end_percent)
    keys = [layer.key for layer in layers]
    m = model_patcher.clone()

    if dit:
        install_layout(m)  # the extra pass's block replaces need each call's token layout

    def active(model, s: float) -> bool:
        return scale != 0 and window.contains(model.model_sampling, s)

    fork = None
    where = fork_block(layers) if settings.share_prefix else None
    if where is not None and scale != 0:
        uid = uuid.uuid4().hex[:12]
        twin_blur = dit_blur_op if dit else blurred_attention
        fork = PrefixFork(uid, where, keys, lambda n, n_new, flag: twin_blur(sigma, n, n_new, flag), active, dit)
        install_apply_wrapper(m, f"conduit_seg_{uid}", fork)
        from ..engine.run_state import attach_run_reset

        attach_run_reset(m, f"conduit_seg_{uid}", fork.state)

    def separate_pass(args: dict) -> torch.Tensor:
        from ..engine.host import calc_cond_batch

        opts = args["model_options"] if fork is None else fork.separate_pass_options(args["model_options"])
        for key in keys:
            if dit:
                opts = options_with_block(opts, key[:2], dit_blur_op(sigma))
            else:
                opts = options_set_replace(opts, "attn1", key, blurred_attention(sigma))
        return calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"], opts)[0]

    def seg_post_cfg(args: dict) -> torch.Tensor:
        denoised = args["denoised"]
        if scale == 0:
            return denoised
        s = float(torch.as_tensor(args["sigma"]).flatten()[0])
        if not active(args["model"], s):
            return denoised
        blurred = fork.replay(args) if fork is not None else None
        if blurred is None:
            blurred = separate_pass(args)
        cond = args["cond_denoised"]
        return seg_math.rescale(args["input"], cond, seg_math.guide(denoised, cond, blurred, scale), amount)

    m.set_model_sampler_post_cfg_function(seg_post_cfg)
    log.debug("SEG on %s: scale %s sigma %s layers %s fork %s", type(m.model).__name__, scale, sigma,
              ",".join(layer.short for layer in layers), where)
    return m
