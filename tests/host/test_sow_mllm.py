"""Conduit MLLM Plan node (loaded as ComfyUI loads the pack): stub server, manual mode, key handling."""
import base64
import io
import json

import pytest
import torch
from PIL import Image

from conduit.pack import pack_module

node_mod = pack_module("nodes.sow_mllm")
errors = pack_module("patches.errors")

KEY = "sk-host-test-SECRET-42"
MANUAL = {"x": 0.25, "y": 0.0, "w": 0.5, "h": 0.5}


def run(**kw):
    args = dict(image=torch.rand(1, 60, 40, 3, generator=torch.Generator().manual_seed(0)), prompt="a woman",
                api="openai-compatible", url="", model="vlm", timeout=5.0, api_key_env="", canvas_width=512,
                canvas_height=512, box_order="auto", box_scale="auto", min_side=0.35, max_side=0.5,
                keep_aspect=True, on_failure="use manual if given")
    args.update(kw)
    return node_mod.ConduitMLLMPlan().plan(**args)


def test_node_with_stub_server(mllm_stub, monkeypatch):
    monkeypatch.setenv("CONDUIT_HOST_TEST_KEY", KEY)
    out = run(url=mllm_stub.url + "/v1", api_key_env="CONDUIT_HOST_TEST_KEY")
    prompt, cond, related, report = out["result"]
    assert prompt.startswith("a photo of a smiling woman")
    # keep_aspect: 40x60 image -> box aspect w/h = 2/3 in pixels; size limited to 0.35..0.5 of 512
    w_px, h_px = cond["w"] * 512, cond["h"] * 512
    assert w_px / h_px == pytest.approx(40 / 60, rel=1e-6) and 0.35 * 512 - 1e-6 <= h_px <= 0.5 * 512 + 1e-6
    assert related == pytest.approx({"x": 0.2, "y": 0.3, "w": 0.6, "h": 0.7})
    assert mllm_stub.requests[0]["path"] == "/v1/chat/completions"
    img_url = mllm_stub.requests[0]["body"]["messages"][-1]["content"][1]["image_url"]["url"]
    png = Image.open(io.BytesIO(base64.b64decode(img_url.split(",", 1)[1])))
    assert png.size == (40, 60)
    assert KEY not in json.dumps(out, default=str)
    assert json.loads(report)["condition_box"]["source"] == "model"


def test_manual_mode_and_missing_inputs():
    out = run(api="manual", manual_condition_box=MANUAL, manual_related_box=MANUAL, manual_prompt="my prompt")
    assert out["result"][:3] == ("my prompt", MANUAL, MANUAL)
    with pytest.raises(errors.ConduitError, match="url and model"):
        run(api="ollama", url=" ")
    with pytest.raises(errors.ConduitError, match="min_side"):
        run(api="manual", min_side=0.6, max_side=0.5)
