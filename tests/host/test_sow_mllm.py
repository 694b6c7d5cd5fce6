"""Conduit MLLM Plan node (loaded as ComfyUI loads the pack): stub server, manual mode, key handling."""
import base64
import io
import json

import pytest
import torch
from PIL import Image

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.nodes.sow_mllm as node_mod
import conduit_pack.patches.engine.errors as errors

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


def test_comfyui_interrupt_stops_the_request_at_once(mllm_stub):
    import threading
    import time

    import comfy.model_management as mm

    mllm_stub.script("prompt", ("drip", 0.2))
    timer = threading.Timer(0.5, mm.interrupt_current_processing, args=(True,))
    t0 = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(mm.InterruptProcessingException):  # what ComfyUI's executor treats as a cancel
            run(url=mllm_stub.url + "/v1", manual_prompt="m", manual_condition_box=MANUAL, manual_related_box=MANUAL,
                timeout=60.0)
        assert time.perf_counter() - t0 < 5.0
        assert not mm.processing_interrupted()  # cleared, as after any interrupted sampler
    finally:
        timer.cancel()
        mm.interrupt_current_processing(False)


def test_fallback_warning_in_report_and_key_out_of_the_text_output(mllm_stub, monkeypatch, caplog):
    monkeypatch.setenv("CONDUIT_HOST_TEST_KEY", KEY + "\r\n")
    mllm_stub.script("prompt", ("echo", "{{\"prompt\": \"a woman, {auth}\"}}"))
    mllm_stub.script("condition_box", ("echo_status", 401))
    out = run(url=mllm_stub.url + "/v1", api_key_env="CONDUIT_HOST_TEST_KEY", manual_condition_box=MANUAL)
    prompt, cond, _, report = out["result"]
    parsed = json.loads(report)
    assert prompt == "a woman, Bearer ***" and cond == MANUAL
    assert parsed["condition_box"]["source"] == "manual"
    assert parsed["condition_box"]["warning"] == "stage 2 (condition box) failed (http_error); the manual value is used"
    assert "warning" not in parsed["prompt"] and out["ui"]["text"] == [report]
    assert KEY not in json.dumps(out, default=str) and KEY not in caplog.text


def test_node_refuses_non_key_variables_and_fragment_urls(mllm_stub):
    for name in ("PATH", "HOME"):
        with pytest.raises(errors.ConduitError, match="such as OPENAI_API_KEY"):
            run(url=mllm_stub.url, api_key_env=name, manual_condition_box=MANUAL, manual_related_box=MANUAL)
    with pytest.raises(errors.ConduitError, match="fragment"):
        run(url=mllm_stub.url + "/interrupt#/v1", manual_condition_box=MANUAL, manual_related_box=MANUAL)
    assert mllm_stub.requests == []


@pytest.mark.parametrize("text", ["(masterpiece:1e999), a woman", "(a:nan) (b:-1e9) (c:inf)",
                                  "(" * 3000 + "x" + ")" * 3000, "(" * 30 + "deep" + ")" * 30,
                                  "((((a:3):3):3):3)", "word " * 200_000 + "(x:1e999)"])
def test_sanitized_prompts_are_safe_for_comfyui_own_parser(text):
    """The host's own prompt-weight parser (what CLIPTextEncode runs) sees only weights in 0..2."""
    import comfy.sd1_clip as sd1

    import conduit_pack.patches.sow.planner.reply as reply
    out, _ = reply.sanitize_prompt(text)
    weights = [w for _, w in sd1.token_weights(sd1.escape_important(out), 1.0)]
    assert weights and all(0.0 <= w <= 2.0 for w in weights), (out[:200], weights[:10])
    assert len(out) <= reply.MAX_PROMPT_CHARS
    # and our emulation agrees with the host's parser on what it reads
    ours = reply.comfy_weights(reply._escape(out))
    assert [(sd1.unescape_important(t), w) for t, w in sd1.token_weights(sd1.escape_important(out), 1.0)] == \
        [(sd1.unescape_important(t), w) for t, w in ours]
