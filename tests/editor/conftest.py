"""Editor tier: the real ComfyUI frontend in the system's headless Chromium, against a real ComfyUI server
with the pack loaded. Skips, saying why, where no browser or no editor is available."""
from __future__ import annotations

import os
import shutil
import time
import tempfile
from pathlib import Path

import pytest

from conduit import workflow
from conduit.host import find_host
from conduit.inputs import write_inputs
from conduit.server import TEST_NODES, ComfyServer
from tests.editor.cdp import Browser, find_browser
from tests.editor.frontend import NoFrontend, frontend_root

OUT = Path(os.environ.get("CONDUIT_EDITOR_OUT", Path(__file__).parent / "out"))
PAGE_JS = (Path(__file__).parent / "page.js").read_text()
READY = "Boolean(window.conduitTest && window.conduitTest.ready)"

_SERVER: ComfyServer | None = None
# the model files the example workflows name, by the loader input that names them
MODEL_INPUTS = {"ckpt_name": "checkpoints", "control_net_name": "controlnet", "lora_name": "loras",
                "vae_name": "vae", "unet_name": "diffusion_models", "clip_name1": "text_encoders",
                "clip_name2": "text_encoders", "clip_name3": "text_encoders"}


def placeholder_models(root: Path) -> dict[str, Path]:
    """Empty files under the names the example workflows load, so their loaders list them as a user's
    install would; nothing here runs them (the queued workflow uses the demo toy model)."""
    import json

    folders: dict[str, Path] = {}
    for path in workflow.WORKFLOW_DIR.glob("*.api.json"):
        for node in json.loads(path.read_text()).values():
            for name, value in node.get("inputs", {}).items():
                if name in MODEL_INPUTS and isinstance(value, str):
                    folder = folders.setdefault(MODEL_INPUTS[name], root / MODEL_INPUTS[name])
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / value).touch()
    return folders


@pytest.fixture(scope="session")
def editor_server():
    global _SERVER
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium); the editor tier needs one")
    host = find_host()
    try:
        root = frontend_root(host)
    except NoFrontend as exc:
        pytest.skip(f"no editor to serve: {exc}")
    models = Path(tempfile.mkdtemp(prefix="conduit-editor-models-"))
    server = ComfyServer(host, extra_node_dirs=[TEST_NODES], frontend_root=root,
                         model_folders=placeholder_models(models))
    server.start()
    write_inputs(server.workdir / "input")
    _SERVER = server
    try:
        yield server
    finally:
        _SERVER = None
        server.stop()
        shutil.rmtree(models, ignore_errors=True)


@pytest.fixture(scope="session")
def page(editor_server):
    browser = Browser(find_browser())
    try:
        browser.open(editor_server.url + "/", "Boolean(window.app || document.querySelector('canvas'))")
        browser.js(PAGE_JS)
        browser.wait_for(READY, timeout=120)
        time.sleep(2)  # the current editor opens its template browser on a first start
        if browser.js("window.conduitTest.dialogs().length"):
            browser.screenshot(OUT / f"editor_first_start_{host_tag(editor_server)}.png")
            browser.js("window.conduitTest.closeDialogs()")
            time.sleep(0.5)
        yield browser
    finally:
        browser.close()


def host_tag(server: ComfyServer) -> str:
    return "v3" if (server.host.path / "comfy_api" / "latest").is_dir() else "pinned"


@pytest.fixture(scope="session")
def shots() -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _SERVER is not None:
        report.sections.append(("ComfyUI log tail", _SERVER.log_tail(60)))
