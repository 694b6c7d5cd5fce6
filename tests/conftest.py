"""Shared test setup: the repo root on sys.path, markers per tier, and the host report line."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_configure(config):
    for tier, text in (("unit", "pure torch, no ComfyUI"), ("host", "real ComfyUI in-process"),
                       ("server", "real ComfyUI over HTTP"), ("slow", "longer end-to-end runs")):
        config.addinivalue_line("markers", f"{tier}: {text}")


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in ("unit", "host", "server"):
            item.add_marker(getattr(pytest.mark, tier))


def pytest_report_header(config):
    from conduit.host import HostNotFound, find_host

    try:
        return f"conduit test host: {find_host(allow_fetch=False).describe()}"
    except HostNotFound:
        return "conduit test host: not prepared yet (host tests fetch it)"
