"""Timing harness shared by every bench/cases_<technique>.py module.

A case module exports `cases(ctx: BenchContext) -> list[Row]`. Each row times a baseline and a patched
callable alternately in the same process and keeps the best of the interleaved repeats: other load on the
machine only ever slows a run down, so the minimum is the least noisy estimate of each one's own cost.
"""
from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Row:
    technique: str
    case: str
    baseline_s: float
    patched_s: float
    device: str
    host: str
    target: float | None = None  # the ratio target, when it names one
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.patched_s / self.baseline_s if self.baseline_s > 0 else float("nan")

    @property
    def meets_target(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    @classmethod
    def from_dict(cls, d: dict) -> "Row":
        """Inverse of as_dict (ratio and meets_target are derived, so they are dropped)."""
        d = dict(d)
        d.pop("ratio", None)
        d.pop("meets_target", None)
        fixed = {k: d.pop(k) for k in ("technique", "case", "baseline_s", "patched_s", "device", "host", "target")}
        return cls(**fixed, extra=d)

    def as_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(ratio=round(self.ratio, 4), meets_target=self.meets_target, **extra)
        return d


@dataclass
class BenchContext:
    device: torch.device
    host: str
    topology: str  # "tiny" | "sdxl_full"
    latent_hw: tuple[int, int]
    steps: int
    repeats: int
    quick: bool = False

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    def row(self, technique: str, case: str, base: float, patched: float, target: float | None = None,
            **extra: Any) -> Row:
        extra.setdefault("topology", self.topology)
        extra.setdefault("latent", f"{self.latent_hw[1] * 8}x{self.latent_hw[0] * 8}")
        return Row(technique, case, base, patched, self.device_name, self.host, target, extra)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def time_pair(baseline: Callable[[], Any], patched: Callable[[], Any], device: torch.device,
              repeats: int = 3, warmup: int = 1) -> tuple[float, float]:
    """Best-of-repeats seconds of each, measured alternately after warm-up runs of both."""
    for _ in range(warmup):
        baseline()
        patched()
    b, p = [], []
    for i in range(repeats):
        order = (baseline, patched) if i % 2 == 0 else (patched, baseline)
        for fn in order:
            (b if fn is baseline else p).append(time_once(fn, device))
    return min(b), min(p)
