"""Where in the sampling run we are: step index and fraction from sigmas (pure torch).

The current sigma is matched against the run's schedule (sample_sigmas). When a host does not expose the
schedule, progress falls back to the model's own sigma<->timestep map, which is what percent ranges mean in
ComfyUI (percent_to_sigma).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepContext:
    sigma: float
    index: int | None  # step index in sample_sigmas, None when the schedule is unknown
    steps: int | None  # number of steps in the run (len(sample_sigmas) - 1)
    percent: float  # sampling progress in [0, 1], 0 = first step

    @property
    def fraction(self) -> float:
        """Step fraction index/steps when the schedule is known, else the progress percent."""
        if self.index is None or not self.steps:
            return self.percent
        return self.index / self.steps


def step_index(sigma: float, sample_sigmas: torch.Tensor, rtol: float = 1e-4) -> int | None:
    """Index of the schedule entry equal to sigma (nearest within rtol), or None if none matches.

    Ancestral and SDE samplers evaluate the model at schedule sigmas; second-order samplers also evaluate
    between entries, in which case the step they belong to is the last entry above sigma.
    """
    s = sample_sigmas.detach().float().cpu()
    if s.numel() == 0:
        return None
    diff = (s - float(sigma)).abs()
    i = int(torch.argmin(diff))
    if diff[i] <= rtol * max(abs(float(sigma)), 1e-8):
        return i
    above = torch.nonzero(s > float(sigma)).flatten()
    return int(above[-1]) if above.numel() else None


def percent_from_timestep(timestep: float, num_timesteps: int = 1000) -> float:
    """Inverse of ComfyUI's discrete percent_to_sigma: t = (1 - p) * (num_timesteps - 1)."""
    return float(min(1.0, max(0.0, 1.0 - timestep / (num_timesteps - 1))))


def in_window(percent: float, start: float, end: float) -> bool:
    return start <= percent <= end
