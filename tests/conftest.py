"""Shared test setup: the repo root on sys.path, markers per tier, the host report line, and the stub MLLM
server fixture that the unit, host and server tiers all use."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_configure(config):
    for tier, text in (("unit", "pure torch, no ComfyUI"), ("host", "real ComfyUI in-process"),
                       ("server", "real ComfyUI over HTTP"), ("editor", "the real editor in headless Chromium"),
                       ("slow", "longer end-to-end runs")):
        config.addinivalue_line("markers", f"{tier}: {text}")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in ("unit", "host", "server", "editor"):
            item.add_marker(getattr(pytest.mark, tier))


def pytest_report_header(config):
    from conduit.host import HostNotFound, find_host

    try:
        return f"conduit test host: {find_host(allow_fetch=False).describe()}"
    except HostNotFound:
        return "conduit test host: not prepared yet (host tests fetch it)"


@pytest.fixture
def mllm_stub():
    """A started tests/mllm_stub.py server; the pack's MLLM reply cache is cleared around it, so a test never
    reads another test's answers (server-tier runs keep their cache in the ComfyUI process, not here)."""
    import conduit  # noqa: F401  (registers conduit_pack for the imports below)
    from tests.mllm_stub import StubMLLM

    import conduit_pack.patches.sow.planner as mc
    mc.clear_cache()
    stub = StubMLLM().start()
    yield stub
    stub.stop()
    mc.clear_cache()
