"""Install the SOW self-attention modulation (patches/sow_math.py) as chained attn1 replaces."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from . import sow_math as sm
from ..engine.attention import set_replace
from ..engine.dit_attention import set_block_op
from .dit_modulation import make_dit_op
from ..engine.batch import COND, kind_mask
from ..engine.host import model_sampling
from ..engine.phases import PHASE_KEY
from ..engine.grid import token_grid
from ..engine.layers import attention_layers
from ..engine.layer_select import layer_list
from ..engine.steps import sigma_to_percent

log = logging.getLogger(__name__)

KINDS = ("unet", "dit")  # DiTs: the joint-attention form in dit_modulation.py
DIT_TOKEN = "conduit_sow"


@dataclass
class SowConfig:
    params: sm.SowParams
    cond_mask: torch.Tensor  # [H, W] canvas latent mask
    related_mask: torch.Tensor | None  # [H, W]
    cond_only: bool = False  # modulate only the positive-prompt rows
    cycles_only: bool = True  # under the COW sampler, act only inside cycles
    _cache: dict = field(default_factory=dict, repr=False)

    def regions(self, grid: tuple[int, int], device, dtype) -> sm.Regions:
        key = (grid, str(device), dtype)
        if key not in self._cache:
            r = sm.regions(self.cond_mask, self.related_mask, grid, self.params)
            self._cache[key] = sm.Regions(r.cond.to(device, dtype), r.related.to(device, dtype),
                                          r.dist_w.to(device, dtype), r.near.to(device), r.f.to(device, dtype),
                                          r.g.to(device, dtype))
        return self._cache[key]

    def __deepcopy__(self, memo: dict) -> "SowConfig":
        return self  # immutable after construction; ModelPatcher clones deep-copy model_options


def progress(extra: dict, config: SowConfig, sampling) -> float | None:
    """Time u in [0, 1] for the decay, or None when the modulation is off at this call."""
    info = extra.get(PHASE_KEY)
    if info is not None:
        if info.get("phase") == "cycle":
            return info.get("cycle", 0) / max(int(info.get("cycles", 1)), 1)
        if config.cycles_only:
            return None
    sigmas = extra.get("sigmas")
    if sigmas is None:
        return 0.0
    return sigma_to_percent(sampling, float(torch.as_tensor(sigmas).flatten()[0]))


def make_replace(config: SowConfig, sampling):
    p = config.params

    def make(inner):
        def attn(q, k, v, extra):
            u = progress(extra, config, sampling)
            w_t = 0.0 if u is None else sm.time_weight(u, p.time_decay, p.time_cutoff)
            if w_t == 0.0 or q.shape[1] != k.shape[1]:
                return inner(q, k, v, extra)
            heads = extra["n_heads"]
            grid = token_grid(tuple(extra["original_shape"][-2:]), q.shape[1])
            reg = config.regions(grid, q.device, q.dtype)
            if not reg.active or not bool(reg.f.any()):  # a zero bias (suppress = enhance = 0): plain attention,
                return inner(q, k, v, extra)  # bit for bit, not the augmented form's rounding of it
            b = q.shape[0]
            scale = torch.full((b,), w_t, device=q.device, dtype=torch.float32)
            if config.cond_only and "cond_or_uncond" in extra:
                scale = scale * kind_mask(b, extra["cond_or_uncond"], COND).to(scale)
            if p.threshold > 0 and reg.near.numel() and p.enhance != 0:
                scale = scale * sm.gate(sm.indicator(q, k, heads, reg.near, reg.cond), p.threshold, p.gate)
            if not bool((scale != 0).any()):
                return inner(q, k, v, extra)
            f = reg.f[None] * scale.to(reg.f)[:, None, None]
            g = reg.g[None].expand(b, -1, -1)

            def attend(q2, k2, v2, d2):
                return inner(q2, k2, v2, {**extra, "dim_head": d2})
            return sm.augmented_attention(q, k, v, heads, f, g, attend)
        return attn
    return make


def parse_layers(text: str, model_patcher, node: str) -> list:
    return layer_list(attention_layers(model_patcher, node, KINDS), text, node)


def apply_sow(model_patcher, config: SowConfig, layers_text: str, node: str):
    """A patched clone; the original ModelPatcher is untouched. UNets: chained attn1 replaces; DiTs: the
    joint-attention op of dit_modulation in each chosen block (core block replaces, chained)."""
    m = model_patcher.clone()
    sampling = model_sampling(model_patcher)
    layers = parse_layers(layers_text, model_patcher, node)
    if layers and layers[0].is_dit:
        op = make_dit_op(config, lambda options: progress(options, config, sampling))
        for layer in layers:
            set_block_op(m, layer.key[:2], op, f"{DIT_TOKEN}_{id(op)}")
        return m
    make = make_replace(config, sampling)
    for layer in layers:
        set_replace(m, "attn1", layer.key, make)
    return m
