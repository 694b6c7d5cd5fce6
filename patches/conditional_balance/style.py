"""Conditional Balance lambda_S: StyleAligned attention sharing only in the most style-sensitive layers.

At every UNet call the planner turns the current sigma into the model's timestep, picks the table row nearest
to it, and takes the top int(lambda_S * L) layers by q score and by k score. AdaIN runs on the projected
queries of the q-selected layers and on the projected keys of the k-selected layers; the reference's keys and
values are shared (appended to every target's) in the union. This happens in chained attn1 replaces, on
post-projection q/k/v as in the official handler. The reference rows come from reference.py.
On DiTs (SD3/SD3.5 joint blocks, Flux double and single blocks) the same planner drives dit_style.py's ops,
which follow the official SD3.5 port: AdaIN on the image tokens' q/k/v by the q/k/v sets, sharing in the
intersection of the q and k sets, table rows timed by sigma * 1000.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from . import style_math
from .dit_style import install_dit_style
from .reference import install as install_reference
from ..engine.attention import is_foreign, set_replace
from ..engine.host import model_sampling as get_model_sampling
from ..engine.errors import ConduitError
from ..engine.families import family_of
from ..engine.run_state import attach_run_reset
from ..engine.schedule import in_window
from ..engine.steps import sigma_to_percent
from ..tables import SensitivityTable


log = logging.getLogger(__name__)

NODE = "Conduit Balanced Style"
MARKER = "conduit_balanced_style"  # transformer_options key; present only in calls that carry reference rows
KINDS = ("unet", "dit")  # SDXL-style UNets and the DiTs (SD3/SD3.5 joint blocks, Flux double and single blocks)


@dataclass(frozen=True)
class StyleSettings:
    strength: float = 0.43  # lambda_S
    adain_q: bool = True
    adain_k: bool = True
    share: bool = True
    ref_scale: float = 1.0  # official shared_score_scale: multiplies the appended reference keys
    ref_shift: float = 0.0  # official shared_score_shift: added to the logits of the reference tokens
    start_percent: float = 0.0
    end_percent: float = 1.0

    @property
    def active(self) -> bool:
        return self.strength > 0 and (self.adain_q or self.adain_k or self.share)


@dataclass(frozen=True)
class StepPlan:
    """What each layer does in one model call.

    UNets (SDXL, official CB): AdaIN on q / k in the q / k sets, sharing in their union. DiTs (official SD3.5
    port, `joint`): AdaIN on q / k / v in the q / k / v sets, sharing in the intersection of the q and k sets."""
    q_layers: frozenset
    k_layers: frozenset
    settings: StyleSettings
    v_layers: frozenset = frozenset()
    joint: bool = False

    def flags(self, key: tuple) -> tuple[bool, bool, bool]:
        in_q, in_k = key in self.q_layers, key in self.k_layers
        s = self.settings
        return in_q and s.adain_q, in_k and s.adain_k, (in_q or in_k) and s.share

    def joint_flags(self, key: tuple) -> tuple[bool, bool, bool, bool]:
        """(AdaIN q, AdaIN k, AdaIN v, share) of a DiT block, by the official SD3.5 rule."""
        in_q, in_k = key in self.q_layers, key in self.k_layers
        s = self.settings
        return in_q and s.adain_q, in_k and s.adain_k, key in self.v_layers, in_q and in_k and s.share

    @property
    def empty(self) -> bool:
        keys = self.q_layers | self.k_layers | self.v_layers
        flags = self.joint_flags if self.joint else self.flags
        return not any(any(flags(k)) for k in keys)


@dataclass
class LayerSelector:
    """Top-N layers per table row and feature (q, k; v too for DiTs), cached (rows are few, calls are many)."""
    table: SensitivityTable
    strength: float
    features: tuple[str, ...] = ("q", "k")
    _rows: dict[int, tuple[frozenset, ...]] = field(default_factory=dict)

    def at(self, timestep: float) -> tuple[frozenset, ...]:
        row = self.table.row_for(timestep)
        if row not in self._rows:
            t = self.table.timesteps[row]
            self._rows[row] = tuple(frozenset(self.table.top_layers(f, t, self.strength)) for f in self.features)
        return self._rows[row]

    def plan(self, timestep: float, settings: StyleSettings, joint: bool) -> StepPlan:
        sets = self.at(timestep)
        return StepPlan(sets[0], sets[1], settings, sets[2] if len(sets) > 2 else frozenset(), joint)


def styled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict, inner: Any,
                     adain_q: bool, adain_k: bool, share: bool, settings: StyleSettings) -> torch.Tensor:
    """One layer's attention for a batch whose chunks each start with their reference row."""
    cou = extra["cond_or_uncond"]
    (qr, qt), (kr, kt), (vr, vt) = (style_math.split_reference(x, cou) for x in (q, k, v))
    chunks, m = qt.shape[:2]
    if adain_q:
        qt = style_math.adain(qt, qr.unsqueeze(1))  # stats over tokens of each image vs its chunk's reference
    if adain_k:
        kt = style_math.adain(kt, kr.unsqueeze(1))
    if share:
        n_own = kt.shape[-2]
        kt = style_math.extend_with_reference(kt, kr.unsqueeze(1), settings.ref_scale)
        vt = style_math.extend_with_reference(vt, vr.unsqueeze(1))
    qt, kt, vt = (x.reshape(chunks * m, *x.shape[2:]) for x in (qt, kt, vt))
    if share and settings.ref_shift != 0.0 and not is_foreign(inner):
        bias = style_math.reference_bias(n_own, kt.shape[-2] - n_own, settings.ref_shift, qt)
        out_t = style_math.attention(qt, kt, vt, extra["n_heads"], bias)
    else:
        # Another pack's function at this layer runs on the shared keys too (a replace has no bias argument,
        # so a score shift is left to plain attention). One that assumes as many keys as queries (PAG's
        # identity attention returns v) gives one row per key: it then gets the images' own keys, which is
        # what "each token attends only to itself" means with a reference present.
        if share and settings.ref_shift != 0.0:
            _warn_shift_dropped()
        out_t = inner(qt, kt, vt, extra)
        if share and out_t.shape[-2] != qt.shape[-2]:
            out_t = inner(qt, kt[..., :n_own, :].contiguous(), vt[..., :n_own, :].contiguous(), extra)
    # Sharing with itself and AdaIN to itself leave the reference unchanged, so it takes plain attention.
    out_r = inner(qr.contiguous(), kr.contiguous(), vr.contiguous(), extra)
    return style_math.join_reference(out_r, out_t.view(chunks, m, *out_t.shape[1:]))


_shift_warned: list[bool] = []


def _warn_shift_dropped() -> None:
    if not _shift_warned:
        _shift_warned.append(True)
        log.warning("%s: another pack's attention replace shares a layer with the style reference, so "
                    "reference_attention_shift is not applied there (a replace takes no score bias).", NODE)


def make_replace(key: tuple):
    def make(inner):
        def attn1(q, k, v, extra):
            plan: StepPlan | None = extra.get(MARKER)
            if plan is None:
                return inner(q, k, v, extra)
            adain_q, adain_k, share = plan.flags(key)
            if not (adain_q or adain_k or share):
                return inner(q, k, v, extra)
            return styled_attention(q, k, v, extra, inner, adain_q, adain_k, share, plan.settings)
        return attn1
    return make


class Planner:
    """Decides per UNet call whether the reference joins the batch and which layers it styles."""

    def __init__(self, base_model: Any, model_sampling: Any, reference: Any, selector: LayerSelector,
                 settings: StyleSettings, family: Any = None) -> None:
        self.base_model = base_model
        self.model_sampling = model_sampling
        self.reference = reference
        self.selector = selector
        self.settings = settings
        self.family = family  # the model family: how its table rows are timed, and whether it is a DiT

    def plan_at(self, sigma: torch.Tensor) -> StepPlan | None:
        s = self.settings
        sig = torch.as_tensor(sigma).flatten()[:1]
        if not in_window(sigma_to_percent(self.model_sampling, float(sig)), s.start_percent, s.end_percent):
            return None
        if self.family is None:
            timestep = float(self.model_sampling.timestep(sig.cpu()).flatten()[0])
        else:
            timestep = float(torch.as_tensor(self.family.table_timestep(self.model_sampling, sig.cpu())).flatten()[0])
        plan = self.selector.plan(timestep, s, joint=self.family is not None and self.family.kind == "dit")
        return None if plan.empty else plan

    def __call__(self, apply: Any, x: torch.Tensor, t: torch.Tensor, c: dict):
        plan = self.plan_at(t)
        if plan is None:
            return None
        if plan.joint and c.get("attention_mask") is not None:
            # a DiT attention mask (e.g. Redux's attn_bias) is sized for the call's own keys; shared blocks add
            # the reference's, so the masked attention would fail deep inside the model
            raise ConduitError(NODE, "the conditioning carries an attention mask (e.g. from Apply Style Model with "
                               "an attn_bias strength), which Balanced Style on DiTs cannot extend to the "
                               "reference's shared tokens.", "use a strength type without a mask, or leave "
                               "Balanced Style out of this graph.")
        ref_x = self.reference.at(self.base_model, self.model_sampling, t.flatten()[0], x, apply=apply, c=c)
        return ref_x, plan


def apply_balanced_style(model_patcher: Any, table: SensitivityTable, reference: Any,
                         settings: StyleSettings) -> Any:
    """A patched clone; the input patcher is untouched. With nothing to do, a plain clone."""
    m = model_patcher.clone()
    if not settings.active:
        return m
    if m.model_options.get(MARKER):
        raise ConduitError(NODE, "this model already has Balanced Style applied; a second reference would be "
                           "added to the first one's batch.", "use one Conduit Balanced Style node per model.")
    family = family_of(m, NODE, KINDS)
    if family.kind == "dit":
        install_dit_style(m, table, settings, MARKER)
        selector = LayerSelector(table, settings.strength, ("q", "k", "v") if "v" in table.scores else ("q", "k"))
    else:
        selector = LayerSelector(table, settings.strength)
        for key in table.layer_keys:
            set_replace(m, "attn1", key, make_replace(key))
    m.model_options[MARKER] = True
    planner = Planner(m.model, get_model_sampling(m), reference, selector, settings, family)
    install_reference(m, MARKER, planner)
    state = getattr(reference, "state", None)
    if state is not None:
        attach_run_reset(m, MARKER, state)
    return m
