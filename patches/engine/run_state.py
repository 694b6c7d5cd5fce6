"""Per-run state for patches, reset at the start of every sampling run."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class RunState(Generic[T]):
    """Holds one value per sampling run.

    On hosts with ComfyUI's wrapper system, an OUTER_SAMPLE wrapper resets it exactly at run start
    (install with attach_run_reset). Older hosts have no such hook, so a run start is recognised by the
    sigma going back up, which every sampler without restarts does only when a new run begins.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self.factory = factory
        self.value: T = factory()
        self.explicit = False
        self._last_sigma: float | None = None
        self.runs = 0

    def reset(self) -> None:
        self.value = self.factory()
        self._last_sigma = None
        self.runs += 1

    def at(self, sigma: float) -> T:
        """The state for the run that is evaluating sigma now."""
        if not self.explicit and self._last_sigma is not None and sigma > self._last_sigma * (1 + 1e-6):
            self.reset()
        self._last_sigma = sigma
        return self.value

    def __deepcopy__(self, memo: dict) -> "RunState[T]":
        return self  # clones of a ModelPatcher deep-copy model_options; all clones share one run


def attach_run_reset(model_patcher: Any, key: str, state: RunState) -> bool:
    """Reset state at the start of every run of this patcher. Returns False on hosts without wrappers."""
    from .host import add_run_start_wrapper

    if not add_run_start_wrapper(model_patcher, key, state.reset):
        return False
    state.explicit = True
    return True
