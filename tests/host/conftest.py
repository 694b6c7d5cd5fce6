"""Host tier: import a real ComfyUI in-process (CPU) and the pack as ComfyUI would load it."""
from __future__ import annotations

import pytest

from conduit.host import find_host, import_host

HOST = find_host()
import_host(HOST)

from conduit import testing  # noqa: E402  (needs comfy on sys.path)
from conduit.pack import import_pack  # noqa: E402

PACK = import_pack(run_init=True)


@pytest.fixture(scope="session")
def host():
    return HOST


@pytest.fixture(scope="session")
def pack():
    return PACK


@pytest.fixture(scope="session")
def tiny_sdxl():
    return testing.tiny_model("sdxl")


@pytest.fixture(scope="session")
def tiny_sd15():
    return testing.tiny_model("sd15")


@pytest.fixture(scope="session")
def toy():
    """The demo toy model as the eval suites load it (the toy-world tests share one)."""
    from eval.gen import load_toy

    return load_toy()


@pytest.fixture(scope="session")
def net():
    """ToyNet, the toy world's classifier (eval/classifier.py)."""
    from eval import classifier

    return classifier.load()
