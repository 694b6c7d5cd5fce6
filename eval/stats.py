"""95 % bootstrap confidence intervals (percentile method, seeded) for the eval suites.

Every claim in docs/toy_world.md is a statistic over images; its interval comes from resampling the
images (or the paired units: the same case and seed under two methods) with replacement.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def ci(values: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean, resamples: int = RESAMPLES,
       seed: int = 0) -> tuple[float, float, float]:
    """(statistic, low, high) of `stat` over values [N] or [N, ...] (rows are the resampled units)."""
    x = np.asarray(values, dtype=np.float64)
    est = float(stat(x))
    if len(x) < 2:
        return est, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (resamples, len(x)))
    boots = np.array([stat(x[i]) for i in idx], dtype=np.float64)
    lo, hi = np.nanpercentile(boots, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return est, float(lo), float(hi)


def paired_diff(a: Sequence[float], b: Sequence[float], **kw) -> tuple[float, float, float]:
    """mean(a - b) over paired units (same case and seed), with its interval."""
    return ci(np.asarray(a, np.float64) - np.asarray(b, np.float64), **kw)


def excludes_zero(interval: tuple[float, float, float]) -> bool:
    _, lo, hi = interval
    return bool(lo > 0 or hi < 0)


def fmt(interval: tuple[float, float, float], digits: int = 3) -> str:
    est, lo, hi = interval
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def status(interval: tuple[float, float, float], better: str = "higher") -> str:
    """'shown' when the interval of an effect (a difference: technique minus baseline) excludes no effect in
    the claimed direction, else 'not shown'."""
    _, lo, hi = interval
    return "shown" if (lo > 0 if better == "higher" else hi < 0) else "not shown"
