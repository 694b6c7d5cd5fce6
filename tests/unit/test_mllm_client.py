"""MLLM client against a real HTTP server on 127.0.0.1: good, malformed, slow, 500, garbled; retries,
timeouts, errors, caching, box conventions, and the API key staying out of every output."""
import json
import socket
import time

import pytest

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.sow.planner as mc
import conduit_pack.patches.engine.errors as errors

NODE = "Test MLLM"
KEY = "sk-test-0123456789-SECRET"


def request(**kw):
    base = dict(user_prompt="a person at a formal event", image_b64="iVBORw0KGgo=", aspect=1.0, canvas_w=512,
                canvas_h=512, min_side=0.0, max_side=1.0, keep_aspect=False)
    base.update(kw)
    return mc.PlanRequest(**base)


def endpoint(mllm_stub, api="ollama", **kw):
    return mc.Endpoint(api, mllm_stub.url, "test-vlm", kw.pop("timeout", 5.0), **kw)


@pytest.mark.parametrize("api", ["ollama", "openai-compatible"])
def test_three_stages_good_replies_and_payloads(mllm_stub, api, monkeypatch):
    monkeypatch.setenv("CONDUIT_TEST_KEY", KEY)
    out = mc.plan(endpoint(mllm_stub, api, api_key_env="CONDUIT_TEST_KEY"), request(), NODE)
    assert out["prompt"].value.startswith("a photo of a smiling woman")
    # Gemini box_2d [ymin, xmin, ymax, xmax] on 0-1000 -> x 0.3..0.7, y 0..0.4
    assert out["condition_box"].value == pytest.approx({"x": 0.3, "y": 0.0, "w": 0.4, "h": 0.4})
    assert out["related_box"].value == pytest.approx({"x": 0.2, "y": 0.3, "w": 0.6, "h": 0.7})
    assert [o.source for o in out.values()] == ["model"] * 3
    assert [r["stage"] for r in mllm_stub.requests] == ["prompt", "condition_box", "related_box"]
    for r in mllm_stub.requests:
        assert r["headers"]["Authorization"] == f"Bearer {KEY}"
        body = r["body"]
        if api == "ollama":
            assert r["path"] == "/api/chat" and body["format"] == "json" and body["stream"] is False
            assert body["messages"][-1]["images"] == ["iVBORw0KGgo="]
        else:
            assert r["path"] == "/chat/completions" and body["response_format"] == {"type": "json_object"}
            parts = body["messages"][-1]["content"]
            assert parts[1]["image_url"]["url"] == "data:image/png;base64,iVBORw0KGgo="
    # stage 2 saw stage 1's prompt; stage 3 saw stage 2's box on the 0-1000 grid
    assert "short brown hair" in json.dumps(mllm_stub.requests[1]["body"]["messages"])
    assert "[300, 0, 700, 400]" in json.dumps(mllm_stub.requests[2]["body"]["messages"])
    assert KEY not in json.dumps({k: [e.value, e.source, e.notes] for k, e in out.items()})


def test_malformed_reply_is_retried_once(mllm_stub):
    mllm_stub.script("condition_box", ("text", "Sure! The face goes top centre."))
    out = mc.plan(endpoint(mllm_stub), request(), NODE)
    assert out["condition_box"].source == "model (retried)"
    tries = [r for r in mllm_stub.requests if r["stage"] == "condition_box"]
    assert len(tries) == 2
    followup = tries[1]["body"]["messages"]
    assert followup[-2]["content"] == "Sure! The face goes top centre."
    assert "not usable" in followup[-1]["content"]


def test_malformed_twice_names_stage_and_reply(mllm_stub):
    mllm_stub.script("related_box", ("text", "{\"box\": [1, 2]}"), ("good", {"box": [900, 100, 100, 900]}))
    with pytest.raises(errors.ConduitError) as exc:
        mc.plan(endpoint(mllm_stub), request(), NODE)
    msg = str(exc.value)
    assert "[Test MLLM] stage 3 (condition-related box)" in msg and "after one retry" in msg
    assert "no area" in msg and "[900.0, 100.0, 100.0, 900.0]" in msg
    assert len([r for r in mllm_stub.requests if r["stage"] == "related_box"]) == 2


def test_slow_server_times_out_with_clear_error(mllm_stub):
    mllm_stub.script("prompt", ("slow", 3.0))
    t0 = time.perf_counter()
    with pytest.raises(errors.ConduitError, match=r"stage 1 \(prompt intensification\): no reply from .* within 0.5 s"):
        mc.plan(endpoint(mllm_stub, timeout=0.5), request(), NODE)
    assert time.perf_counter() - t0 < 2.5


def test_http_500_and_garbled_body(mllm_stub, monkeypatch):
    monkeypatch.setenv("CONDUIT_TEST_KEY", KEY)
    mllm_stub.script("prompt", ("status", 500, f"internal error while handling Bearer {KEY}"))
    with pytest.raises(errors.ConduitError) as exc:
        mc.plan(endpoint(mllm_stub, api_key_env="CONDUIT_TEST_KEY"), request(), NODE)
    assert "stage 1" in str(exc.value) and "HTTP 500" in str(exc.value) and "internal error" in str(exc.value)
    assert KEY not in str(exc.value) and "***" in str(exc.value)
    mllm_stub.script("prompt", ("garbled", "<html>gateway</html>"))
    with pytest.raises(errors.ConduitError, match=r"stage 1.*not JSON.*gateway"):
        mc.plan(endpoint(mllm_stub), request(), NODE)


def test_unreachable_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    ep = mc.Endpoint("openai-compatible", f"http://127.0.0.1:{port}/v1", "m", 2.0)
    with pytest.raises(errors.ConduitError, match=r"stage 1 .*cannot reach http://127.0.0.1:\d+/v1/chat/completions"):
        mc.plan(ep, request(), NODE)


def test_missing_key_variable_is_an_error(mllm_stub, monkeypatch):
    monkeypatch.delenv("CONDUIT_NO_SUCH_KEY", raising=False)
    with pytest.raises(errors.ConduitError, match="CONDUIT_NO_SUCH_KEY"):
        mc.plan(endpoint(mllm_stub, api_key_env="CONDUIT_NO_SUCH_KEY"), request(), NODE)
    assert mllm_stub.requests == []


def test_results_are_cached_by_input(mllm_stub):
    ep = endpoint(mllm_stub)
    mc.plan(ep, request(), NODE)
    assert len(mllm_stub.requests) == 3
    again = mc.plan(ep, request(), NODE)
    assert len(mllm_stub.requests) == 3 and {e.source for e in again.values()} == {"cache"}
    mc.plan(ep, request(user_prompt="an old man on a beach"), NODE)  # stage 1 input changed; its (stubbed)
    assert len(mllm_stub.requests) == 4  # answer is the same, so stages 2 and 3 see unchanged inputs
    mc.plan(ep, request(image_b64="AAAA"), NODE)
    assert len(mllm_stub.requests) == 7
    mllm_stub.script("prompt", ("status", 500, "down"))
    with pytest.raises(errors.ConduitError):  # failures are not cached
        mc.plan(ep, request(user_prompt="x"), NODE)
    mc.plan(ep, request(user_prompt="x"), NODE)


def test_fallback_to_manual_values(mllm_stub):
    manual = {"x": 0.25, "y": 0.0, "w": 0.5, "h": 0.5}
    mllm_stub.script("condition_box", ("status", 503, "overloaded"))
    out = mc.plan(endpoint(mllm_stub), request(manual_condition=manual), NODE)
    assert out["condition_box"].value == manual and out["condition_box"].source == "manual"
    assert "HTTP 503" in out["condition_box"].notes[0]
    assert out["related_box"].source == "model"
    mllm_stub.script("condition_box", ("status", 503, "overloaded"))
    with pytest.raises(errors.ConduitError, match="HTTP 503"):
        mc.plan(endpoint(mllm_stub), request(manual_condition=manual, fallback=False), NODE)
    offline = mc.plan(None, request(manual_condition=manual, manual_related=manual, manual_prompt=""), NODE)
    assert offline["prompt"].value == "a person at a formal event"
    assert {e.source for e in offline.values()} == {"manual"}
    with pytest.raises(errors.ConduitError, match="stage 3.*no manual value"):
        mc.plan(None, request(manual_condition=manual), NODE)


@pytest.mark.parametrize("reply,order,scale,expected", [
    ({"box": [100, 200, 300, 600]}, "auto", "auto", (0.1, 0.2, 0.2, 0.4)),
    ({"box_2d": [200, 100, 600, 300]}, "auto", "auto", (0.1, 0.2, 0.2, 0.4)),  # Gemini yxyx
    ({"box": [0.1, 0.2, 0.3, 0.6]}, "auto", "auto", (0.1, 0.2, 0.2, 0.4)),
    ({"box": [51.2, 102.4, 102.4, 204.8]}, "xywh", "pixels", (0.1, 0.2, 0.2, 0.4)),  # paper [x, y, w, h]
    ({"bbox_2d": [51.2, 102.4, 153.6, 307.2]}, "auto", "pixels", (0.1, 0.2, 0.2, 0.4)),  # Qwen absolute pixels
    ({"box": [0.2, 0.1, 0.6, 0.3], "order": "yxyx"}, "auto", "auto", (0.1, 0.2, 0.2, 0.4)),
    ({"x": 100, "y": 200, "width": 200, "height": 400, "scale": "0-1000"}, "auto", "auto", (0.1, 0.2, 0.2, 0.4)),
    ({"xmin": 1, "ymin": 2, "xmax": 3, "ymax": 6, "scale": "pixels"}, "auto", "auto",
     (1 / 512, 2 / 512, 2 / 512, 4 / 512)),
])
def test_box_conventions_normalize(reply, order, scale, expected):
    box, notes = mc.normalize_box(reply, 512, 512, order, scale)
    assert (box["x"], box["y"], box["w"], box["h"]) == pytest.approx(expected)


def test_box_clamping_and_rejects():
    box, notes = mc.normalize_box({"box": [-100, 900, 500, 1200], "scale": 1000}, 512, 512)
    assert box == pytest.approx({"x": 0.0, "y": 0.9, "w": 0.5, "h": 0.1}) and "clamped to the canvas" in notes
    for bad in ({"box": [500, 100, 100, 900]}, {"box": [1, 2, 3]}, {"box": ["a", 1, 2, 3]}, {"answer": 3},
                {"box": [1200, 1200, 1500, 1500], "scale": "0-1000"}):
        with pytest.raises(mc.BadReply):
            mc.normalize_box(bad, 512, 512)


def test_fit_box_keeps_centre_aspect_and_size_limits():
    box = mc.fit_box({"x": 0.4, "y": 0.4, "w": 0.2, "h": 0.1}, 512, 512, aspect=1.0, min_side=0.35, max_side=0.5)
    assert box["w"] == pytest.approx(0.35) and box["h"] == pytest.approx(0.35)
    assert box["x"] + box["w"] / 2 == pytest.approx(0.5) and box["y"] + box["h"] / 2 == pytest.approx(0.45)
    edge = mc.fit_box({"x": 0.9, "y": 0.0, "w": 0.1, "h": 0.1}, 512, 512, None, 0.35, 0.5)
    assert edge["x"] + edge["w"] == pytest.approx(1.0) and edge["w"] == pytest.approx(0.35)


def test_parse_object_tolerates_fences_and_prose():
    assert mc.parse_object('```json\n{"box": [1, 2, 3, 4]}\n```') == {"box": [1, 2, 3, 4]}
    assert mc.parse_object('Here: {"prompt": "x"} done') == {"prompt": "x"}
    for bad in ("no json here", "[1, 2]", "{broken"):
        with pytest.raises(mc.BadReply):
            mc.parse_object(bad)


def test_client_imports_without_comfyui():
    import subprocess
    import sys

    from conduit.host import REPO_ROOT

    code = ("import sys; sys.path.insert(0, '.'); import conduit; import conduit_pack.patches.sow.planner; "
            "bad = [k for k in sys.modules if k == 'comfy' or k.startswith('comfy.')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
