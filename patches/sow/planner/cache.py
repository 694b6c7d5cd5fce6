"""Stage results kept in memory, keyed by a hash of everything that changes the answer (never the key).

A plan is rerun whenever ComfyUI re-executes the node; the cache makes an unchanged graph cost no requests.
Only validated, redacted results are stored, failures never, and the size is bounded (LRU).
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any

CACHE_SIZE = 256


class ReplyCache:
    """A small thread-safe LRU of (value, notes) per stage input hash."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[Any, tuple[str, ...]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[Any, tuple[str, ...]] | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: str, value: Any, notes: list[str] | tuple[str, ...]) -> None:
        with self._lock:
            self._items[key] = (value, tuple(notes))
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


CACHE = ReplyCache()


def clear_cache() -> None:
    CACHE.clear()


def cache_key(identity: dict, stage: str, messages: list[dict], images_b64: list[str], extra: dict) -> str:
    blob = json.dumps({"endpoint": identity, "stage": stage, "messages": messages,
                       "images": [hashlib.sha256(b.encode()).hexdigest() for b in images_b64], "extra": extra},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
