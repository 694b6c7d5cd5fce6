"""Conditional Balance lambda_T: gate the ControlNets attached to a conditioning by timestep.

Official rule (UNets): at timesteps t < lambda_T * 1000 the ControlNet's down-block residuals are zeroed and its
mid residual is kept. ComfyUI puts the down-block (skip connection) residuals of a ControlNet in the 'output'
list and T2I-Adapter features in 'input'; both are gated, 'middle' is kept unless gate_mid is set.

DiTs (SD3/SD3.5, Flux): a DiT ControlNet returns one residual per transformer block, added to the image tokens
after that block ('output' after SD3's joint blocks; 'input' after Flux's double and 'output' after its single
blocks, see the family's control_lists). There is no mid block: every residual carries the hint's spatial
layout, so all of them are the structure residuals and a gated step runs without the ControlNet (it is not
evaluated). The clock is the noise level (steps.noise_time): t < lambda_T * 1000 on SD3's own timesteps, the
same sigma < lambda_T on Flux. Only ControlNet types whose layout the family lists are gated; any other one
attached to a DiT stops the run with an error instead of being gated wrongly.

The gate wraps the ControlNet object stored in each cond's "control" entry (the outermost of a chain built by
the core Apply ControlNet nodes, so every ControlNet applied before the gate is gated). Everything the
samplers call on a ControlNet is forwarded; only get_control looks at the timestep. When the whole output is
gated, the wrapped chain is not evaluated at all for that step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..engine.errors import ConduitError
from ..engine.families import DIT, recognised_family
from ..engine.steps import noise_time

log = logging.getLogger(__name__)

NODE = "Conduit ControlNet Timestep Gate"

GATED_LISTS = ("input", "output")  # ComfyUI's names for the residuals CB zeroes; "middle" is the mid block


@dataclass(frozen=True)
class GateSettings:
    balance: float  # lambda_T in [0, 1]
    gate_mid: bool = False
    invert: bool = False

    def gated(self, timestep: float, full: float = 1000.0) -> bool:
        """True when the down residuals are switched off at this model timestep (0..999 of full 1000; a flow
        model's sigma of full 1)."""
        low_noise = timestep < self.balance * full
        return low_noise != self.invert

    @property
    def never(self) -> bool:
        """lambda_T = 0 without inversion gates nothing: the wrapper is then left out entirely."""
        return self.balance <= 0.0 and not self.invert


def gate_residuals(control: dict | None, gate_mid: bool) -> dict | None:
    """A new control dict with the down residuals (and optionally mid) removed; the UNet skips None entries."""
    if control is None:
        return None
    out = {}
    for name, items in control.items():
        if name in GATED_LISTS or (gate_mid and name == "middle"):
            out[name] = [None] * len(items)
        else:
            out[name] = list(items)
    return out


class GatedControl:
    """Stands in for a ComfyUI ControlNet (or a chain of them) in a cond's "control" entry."""

    _OWN = ("inner", "settings", "model_sampling", "whole")

    def __init__(self, inner: Any, settings: GateSettings) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "settings", settings)
        object.__setattr__(self, "model_sampling", None)
        object.__setattr__(self, "whole", False)  # a gated step drops the whole output (DiTs)

    def __getattr__(self, name: str) -> Any:
        if name in GatedControl._OWN or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in GatedControl._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    # --- the sampler's ControlNet protocol ---------------------------------------------------------------------
    def pre_run(self, model: Any, percent_to_timestep_function: Any) -> None:
        # A model no family describes keeps the gate's general behaviour (UNet lists, noise-level clock), as
        # the gate always had; a DiT family's ControlNets must be of a type whose layout it knows.
        family = recognised_family(model)
        self.whole = family is not None and family.kind == DIT
        if self.whole:
            check_dit_controlnets(self.inner, family)
        self.model_sampling = model.model_sampling
        self.inner.pre_run(model, percent_to_timestep_function)

    def cleanup(self) -> None:
        self.model_sampling = None
        self.whole = False
        self.inner.cleanup()

    def get_models(self) -> list:
        return self.inner.get_models()

    def inference_memory_requirements(self, dtype: torch.dtype) -> int:
        return self.inner.inference_memory_requirements(dtype)

    def set_previous_controlnet(self, controlnet: Any) -> "GatedControl":
        self.inner.set_previous_controlnet(controlnet)
        return self

    def copy(self) -> "GatedControl":
        return GatedControl(self.inner.copy(), self.settings)

    def timestep(self, sigma: torch.Tensor) -> tuple[float, float] | None:
        """(model time, its full range) of this step, see steps.noise_time; None before pre_run."""
        ms = self.model_sampling or getattr(self.inner, "model_sampling_current", None)
        if ms is None:
            return None
        return noise_time(ms, float(torch.as_tensor(sigma).flatten()[0]))

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int, *rest: Any):
        """Same signature as the wrapped ControlNet on either host (current hosts add transformer_options)."""
        timestep = self.timestep(t)
        if timestep is None:
            log.warning("Conduit ControlNet Timestep Gate: no model sampling known (pre_run was not called); "
                        "the ControlNet runs ungated.")
            return self.inner.get_control(x_noisy, t, cond, batched_number, *rest)
        if not self.settings.gated(*timestep):
            return self.inner.get_control(x_noisy, t, cond, batched_number, *rest)
        if self.settings.gate_mid or self.whole:
            return None  # nothing of the ControlNet survives this step: skip computing it
        return gate_residuals(self.inner.get_control(x_noisy, t, cond, batched_number, *rest), False)


def chain(control: Any) -> list:
    """A ControlNet and every one applied before it (previous_controlnet links), outermost first."""
    out, seen = [], set()
    while control is not None and id(control) not in seen:
        seen.add(id(control))
        out.append(control)
        control = getattr(control, "previous_controlnet", None)
    return out


def check_dit_controlnets(control: Any, family: Any) -> None:
    """Every ControlNet of the chain must be a type whose residual layout the DiT family knows."""
    for c in chain(control):
        inner = getattr(c, "control_model", None)
        if inner is None or not family.fits_controlnet(inner):
            what = type(c).__name__ + ("" if inner is None else f" ({type(inner).__name__})")
            raise ConduitError(
                NODE, f"the {what} applied before the gate has no known residual layout on a {family.name} "
                      "model, so it can't be gated by timestep.",
                f"gate only {family.name} ControlNets loaded with the core ControlNet loader (SD3/SD3.5: the "
                "SD3 and SD3.5 ControlNets; Flux: XLabs, Mistoline and InstantX/Union), or apply this one after "
                "the gate.")


def gate_conditionings(conditionings: list[list], settings: GateSettings) -> list[list]:
    """Copies of the CONDITIONING lists with every control wrapped; one wrapper per distinct ControlNet, so
    positive and negative keep sharing the object (ComfyUI only batches cond and uncond when they do)."""
    wrapped: dict[int, GatedControl] = {}
    out = []
    for conditioning in conditionings:
        new = []
        for tensor, extra in conditioning:
            extra = dict(extra)
            control = extra.get("control")
            if control is not None and not settings.never:
                if id(control) not in wrapped:
                    wrapped[id(control)] = GatedControl(control, settings)
                extra["control"] = wrapped[id(control)]
            new.append([tensor, extra])
        out.append(new)
    return out


def count_controls(conditioning: list) -> int:
    return sum(1 for _, extra in conditioning if extra.get("control") is not None)
