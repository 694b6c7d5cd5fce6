"""Server tier: one real ComfyUI (main.py --cpu on 127.0.0.1) per session, with the pack and test loaders."""
from __future__ import annotations

import pytest

from conduit.host import find_host
from conduit.inputs import write_inputs
from conduit.server import TEST_NODES, ComfyServer

_SERVER: ComfyServer | None = None


@pytest.fixture(scope="session")
def comfy_server():
    global _SERVER
    server = ComfyServer(find_host(), extra_node_dirs=[TEST_NODES])
    server.start()
    write_inputs(server.workdir / "input")
    _SERVER = server
    try:
        yield server
    finally:
        _SERVER = None
        server.stop()


@pytest.fixture(scope="session")
def object_info(comfy_server):
    return comfy_server.client().object_info()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _SERVER is not None:
        report.sections.append(("ComfyUI log tail", _SERVER.log_tail(120)))
