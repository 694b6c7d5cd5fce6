"""The MLLM planner against a hostile server (tests/mllm_stub.py, a real HTTP server on 127.0.0.1): total
deadline, reply size cap (plain, chunked, gzip), nothing echoed back, JSON depth, the key in every form kept
out of logs, errors and outputs, key-name and URL checks, redirects, prompt weights, and interrupts."""
import json
import logging
import re
import threading
import time
import tracemalloc

import pytest

import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from tests.mllm_stub import StubMLLM

import conduit_pack.patches.sow.planner as planner
import conduit_pack.patches.sow.planner.transport as transport
import conduit_pack.patches.sow.planner.reply as reply
import conduit_pack.patches.sow.planner.secrets as secrets
import conduit_pack.patches.engine.errors as errors

NODE = "Test MLLM"
KEY = "sk-test-0123456789-SECRET"
KEY_ENV = "CONDUIT_TEST_KEY"
MANUAL_BOX = {"x": 0.25, "y": 0.0, "w": 0.5, "h": 0.5}


def request(**kw):
    base = dict(user_prompt="a person at a formal event", image_b64="iVBORw0KGgo=", aspect=1.0, canvas_w=512,
                canvas_h=512, min_side=0.0, max_side=1.0, keep_aspect=False)
    base.update(kw)
    return planner.PlanRequest(**base)


def with_manual(**kw):
    return request(manual_prompt="manual words", manual_condition=MANUAL_BOX, manual_related=MANUAL_BOX, **kw)


def endpoint(stub, api="ollama", url=None, **kw):
    return planner.Endpoint(api, url or stub.url, "test-vlm", kw.pop("timeout", 5.0), **kw)


def direct(stub, stats, cap=256 << 10, deadline_s=10.0, interrupted=None, path="/api/chat", follow=None):
    """One bounded POST of a prompt-stage body, without the planner around it."""
    body = json.dumps(planner.build_payload(planner.Endpoint("ollama", stub.url, "m"),
                                            planner.prompt_messages("x"), [])).encode()
    return transport.post(stub.url + path, body, {"Content-Type": "application/json"},
                          deadline=time.monotonic() + deadline_s, max_bytes=cap, interrupted=interrupted,
                          follow=follow, stats=stats)


def leaks(*texts):
    forms = (KEY[:10], KEY + "\r\n", repr(KEY + "\r\n")[1:-1], f"Bearer {KEY}")  # a prefix: no half keys either
    return [t for t in texts for f in forms if f in t]


# ---------------------------------------------------------------------------------------------- time

def test_slow_drip_is_bounded_by_the_total_deadline(mllm_stub, caplog):
    mllm_stub.script("prompt", ("drip", 0.5))
    t0 = time.perf_counter()
    out = planner.plan(endpoint(mllm_stub, timeout=1.5), with_manual(), NODE)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.5 + 3.0, elapsed  # without the total deadline: ~100 s of dripping
    assert out["prompt"].source == "manual" and out["prompt"].value == "manual words"
    assert out["prompt"].notes[0].startswith("fallback after timeout: stage 1 (prompt intensification): no reply")
    assert "timeout" in out["prompt"].warning
    assert out["condition_box"].source == "model"  # the other stages are unaffected
    assert any("failed (timeout)" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert mllm_stub.dripped < 12


def test_deadline_covers_the_retry(mllm_stub):
    mllm_stub.script("prompt", ("text", "not json"), ("slow", 5.0))
    t0 = time.perf_counter()
    with pytest.raises(errors.ConduitError, match="no reply from .* within 1.5 s"):
        planner.plan(endpoint(mllm_stub, timeout=1.5), request(), NODE)
    assert time.perf_counter() - t0 < 1.5 + 3.0


def test_drip_times_out_in_the_transport(mllm_stub):
    mllm_stub.script("prompt", ("drip", 0.5))
    stats = transport.ReadStats()
    t0 = time.perf_counter()
    with pytest.raises(transport.TransportError) as exc:
        direct(mllm_stub, stats, deadline_s=1.2)
    assert exc.value.kind == "timeout" and time.perf_counter() - t0 < 1.2 + 2.0
    assert stats.raw_bytes < 10


# ---------------------------------------------------------------------------------------------- size

def test_endless_chunked_body_stops_at_the_cap(mllm_stub):
    mllm_stub.script("prompt", ("endless",))
    stats = transport.ReadStats()
    cap = 256 << 10
    with pytest.raises(transport.TransportError, match="over the 262144-byte cap") as exc:
        direct(mllm_stub, stats, cap=cap)
    assert exc.value.kind == "too_large"
    assert stats.decoded_bytes <= cap + 1 and stats.raw_bytes <= cap + transport.CHUNK


def test_gzip_bomb_stops_at_the_cap(mllm_stub):
    mllm_stub.script("prompt", ("gzip_bomb", 64))  # 64 MiB decoded from about 64 KiB
    stats = transport.ReadStats()
    cap = 256 << 10
    with pytest.raises(transport.TransportError) as exc:
        direct(mllm_stub, stats, cap=cap)
    assert exc.value.kind == "too_large"
    assert stats.decoded_bytes <= cap + 1  # decoded output is bounded per step, not per compressed chunk
    assert stats.raw_bytes < 64 << 10  # only the start of the compressed stream was read


def test_gzip_reply_under_the_cap_is_decoded(mllm_stub):
    mllm_stub.script("prompt", ("gzip_bomb", 1))
    stats = transport.ReadStats()
    got = direct(mllm_stub, stats, cap=2 << 20)
    assert got.status == 200 and len(got.data) == (1 << 20) + len(b'{"message": {"role": "assistant", "content": "')


def test_announced_length_over_the_cap_is_refused_before_reading(mllm_stub):
    mllm_stub.script("prompt", ("announce", 10 ** 9))
    stats = transport.ReadStats()
    with pytest.raises(transport.TransportError, match="announces 1000000000 bytes") as exc:
        direct(mllm_stub, stats)
    assert exc.value.kind == "too_large" and stats.raw_bytes == 0


@pytest.mark.parametrize("mode", [("endless",), ("gzip_bomb", 64)])
def test_oversized_replies_fall_back_with_bounded_memory(mllm_stub, caplog, mode):
    mllm_stub.script("prompt", mode)
    tracemalloc.start()
    try:
        out = planner.plan(endpoint(mllm_stub), with_manual(), NODE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, peak  # the default cap is 1 MiB; unbounded, this reached gigabytes
    assert out["prompt"].source == "manual" and "too_large" in out["prompt"].warning
    assert "over the 1048576-byte cap" in out["prompt"].notes[0]
    assert any("failed (too_large)" in r.getMessage() for r in caplog.records)


def test_huge_reply_is_never_sent_back_in_the_retry(mllm_stub):
    mllm_stub.script("prompt", ("text", "x" * 600_000))
    out = planner.plan(endpoint(mllm_stub), request(), NODE)
    assert out["prompt"].source == "model (retried)"
    first, second = [r for r in mllm_stub.requests if r["stage"] == "prompt"]
    assert second["size"] < first["size"] + 1200, (first["size"], second["size"])
    quoted = second["body"]["messages"][-2]["content"]
    assert len(quoted) <= reply.SHOWN + 3 and quoted.startswith("xxx")
    assert max(r["size"] for r in mllm_stub.requests) < 8000


# ---------------------------------------------------------------------------------------------- JSON depth

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("text", [DEEP, '{"box": ' + DEEP + "}", "{" + '"a": {' * 50_000 + "}" * 50_001])
def test_deep_json_is_a_bad_reply_not_a_recursion_error(text):
    with pytest.raises(reply.BadReply, match="nested deeper than 32"):
        reply.parse_object(text)


def test_depth_limit_is_32_levels():
    at_limit = '{"a": ' + "[" * 31 + "]" * 31 + "}"
    assert reply.json_depth(at_limit, 32) == 32 and list(reply.parse_object(at_limit)) == ["a"]
    with pytest.raises(reply.BadReply, match="nested deeper than 32"):  # far below Python's recursion limit
        reply.parse_object('{"a": ' + "[" * 40 + "]" * 40 + "}")
    assert reply.json_depth('{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', 32) == 1  # strings don't count


def test_deep_json_falls_back_with_a_warning(mllm_stub, caplog):
    mllm_stub.script("prompt", ("text", DEEP), ("text", '{"prompt": ' + DEEP + "}"))
    mllm_stub.script("condition_box", ("garbled", DEEP))  # the envelope itself
    out = planner.plan(endpoint(mllm_stub), with_manual(), NODE)
    assert out["prompt"].source == "manual" and "bad_reply" in out["prompt"].warning
    assert "nested deeper than 32 levels" in out["prompt"].notes[0]
    assert out["condition_box"].source == "manual" and "too_deep" in out["condition_box"].warning
    assert out["related_box"].source == "model"
    assert {"failed (bad_reply)", "failed (too_deep)"} <= {m for r in caplog.records for m in
                                                          ("failed (bad_reply)", "failed (too_deep)")
                                                          if m in r.getMessage()}
    mllm_stub.script("condition_box", ("garbled", DEEP))
    with pytest.raises(planner.PlanFailure, match="nested deeper") as exc:
        planner.plan(endpoint(mllm_stub), request(user_prompt="other", fallback=False), NODE)
    assert exc.value.kind == "too_deep"


# ---------------------------------------------------------------------------------------------- the key

def all_text(out, caplog, stub=None):
    texts = [caplog.text, json.dumps({k: [e.value, e.source, e.notes, e.warning] for k, e in out.items()})]
    if stub is not None:
        texts += [json.dumps(r["body"]) for r in stub.requests]
    return texts


def test_echoed_header_is_redacted_everywhere(mllm_stub, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, KEY)
    ep = endpoint(mllm_stub, api_key_env=KEY_ENV)
    mllm_stub.script("prompt", ("echo", "I received {auth}, is that right?"), ("echo", "still {auth}"))
    mllm_stub.script("condition_box", ("echo_status", 401))
    straddle = '{{"box": ["' + "x" * 100 + ' {auth}", 1, 2, 3]}}'  # messages cut values at 120 characters
    mllm_stub.script("related_box", ("echo", straddle), ("echo", straddle))
    out = planner.plan(ep, with_manual(), NODE)
    assert out["prompt"].source == "manual" and out["condition_box"].source == "manual"
    assert out["related_box"].source == "manual" and "box values are not numbers" in out["related_box"].notes[0]
    assert "HTTP 401" in out["condition_box"].notes[0] and "***" in out["condition_box"].notes[0]
    assert "***" in out["prompt"].notes[0]
    assert not leaks(*all_text(out, caplog, mllm_stub))
    # a valid reply whose prompt quotes the header: the node's prompt output is redacted too
    mllm_stub.script("prompt", ("echo", '{{"prompt": "a cat wearing {auth}"}}'))
    out = planner.plan(ep, request(user_prompt="cat"), NODE)
    assert out["prompt"].source == "model" and out["prompt"].value == "a cat wearing Bearer ***"
    assert not leaks(*all_text(out, caplog))
    mllm_stub.script("prompt", ("echo", "{auth}"), ("echo", "{auth}"))
    with pytest.raises(errors.ConduitError) as exc:
        planner.plan(ep, request(user_prompt="dog"), NODE)
    assert not leaks(str(exc.value), caplog.text) and "***" in str(exc.value)


def test_key_with_crlf_is_stripped_and_never_shown(mllm_stub, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, KEY + "\r\n")
    ep = endpoint(mllm_stub, api_key_env=KEY_ENV)
    out = planner.plan(ep, request(), NODE)
    assert [e.source for e in out.values()] == ["model"] * 3
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in mllm_stub.requests)
    mllm_stub.script("prompt", ("echo_status", 500))
    with pytest.raises(errors.ConduitError) as exc:
        planner.plan(ep, request(user_prompt="other"), NODE)
    assert "HTTP 500" in str(exc.value) and not leaks(str(exc.value), caplog.text)


def test_key_with_inner_control_characters_is_refused_unshown(mllm_stub, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, "sk-first-half\r\nX-Injected: sk-second-half")
    with pytest.raises(errors.ConduitError, match="cannot carry") as exc:
        planner.plan(endpoint(mllm_stub, api_key_env=KEY_ENV), request(), NODE)
    assert "half" not in str(exc.value) and "half" not in caplog.text
    assert mllm_stub.requests == []
    out = planner.plan(endpoint(mllm_stub, api_key_env=KEY_ENV), with_manual(), NODE)  # a stage failure
    assert {e.source for e in out.values()} == {"manual"} and "no_key" in out["prompt"].warning


@pytest.mark.parametrize("pasted", [KEY, "sk-proj-" + "Ab3dE6gH9" * 5, "my-openai-key", "openai_api_key",
                                    "Bearer " + KEY])
def test_key_pasted_into_api_key_env_is_refused_unshown(mllm_stub, caplog, monkeypatch, pasted):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(errors.ConduitError, match="must name an environment variable such as OPENAI_API_KEY") as exc:
        planner.plan(endpoint(mllm_stub, api_key_env=pasted), with_manual(), NODE)
    assert pasted not in str(exc.value) and pasted not in caplog.text and not leaks(str(exc.value))
    assert mllm_stub.requests == []


def test_pasted_value_equal_to_an_env_value_is_refused(monkeypatch):
    monkeypatch.setenv("SOME_SETTING", "LOOKS_LIKE_A_NAME_KEY")
    with pytest.raises(secrets.KeyRefused, match="value of an environment variable") as exc:
        secrets.check_key_name("LOOKS_LIKE_A_NAME_KEY")
    assert "LOOKS_LIKE" not in str(exc.value)


@pytest.mark.parametrize("name", ["PATH", "HOME", "USER", "LD_PRELOAD", "PYTHONPATH", "AWS_SECRET_ACCESS_KEY",
                                  "AWS_SESSION_TOKEN", "GITHUB_TOKEN", "GH_TOKEN", "HF_TOKEN",
                                  "HUGGING_FACE_HUB_TOKEN", "CIVITAI_API_KEY", "DJANGO_SECRET_KEY"])
def test_api_key_env_must_be_an_api_key_variable(mllm_stub, monkeypatch, name):
    monkeypatch.setenv(name, "some-credential-value")
    with pytest.raises(errors.ConduitError) as exc:
        planner.plan(endpoint(mllm_stub, api_key_env=name), with_manual(), NODE)
    assert "some-credential-value" not in str(exc.value)
    assert mllm_stub.requests == []  # refused before any request, whatever on_failure says


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY",
                                  "MY_LLM_TOKEN", "OLLAMA_KEY", "AZURE_OPENAI_API_KEY"])
def test_usual_key_names_are_accepted(name):
    assert secrets.check_key_name(name, {}) == name


def test_allowlist_in_comfyui_environment():
    env = {secrets.ALLOW_VAR: "HF_TOKEN, MY_PROXY_KEY"}
    assert secrets.check_key_name("HF_TOKEN", env) == "HF_TOKEN"
    with pytest.raises(secrets.KeyRefused, match="not in CONDUIT_MLLM_KEY_VARS"):
        secrets.check_key_name("OPENAI_API_KEY", env)
    with pytest.raises(secrets.KeyRefused, match="such as OPENAI_API_KEY"):
        secrets.check_key_name("path", env)


def test_redactor_covers_every_form():
    red = secrets.Redactor([KEY + "\r\n", KEY])
    text = f"a {KEY} b {repr(KEY + chr(13))} c {json.dumps(KEY + chr(10))} d sk-test-0123456789-SECRET%0D"
    assert KEY not in red(text) and red(text).count("***") == 4
    assert red.value({"a": [f"Bearer {KEY}"], "b": 1.5}) == {"a": ["Bearer ***"], "b": 1.5}
    assert repr(secrets.Secret("X_KEY", KEY, KEY)) == "Secret(X_KEY=***)"


# ---------------------------------------------------------------------------------------------- URLs

@pytest.mark.parametrize("url,api,expected", [
    ("http://127.0.0.1:11434", "ollama", "http://127.0.0.1:11434/api/chat"),
    ("http://127.0.0.1:11434/", "ollama", "http://127.0.0.1:11434/api/chat"),
    ("HTTPS://api.openai.com/v1", "openai-compatible", "https://api.openai.com/v1/chat/completions"),
    ("http://h:1/interrupt/../api/chat", "ollama", "http://h:1/api/chat"),
    ("http://h:1//api//chat", "ollama", "http://h:1/api/chat"),
    ("http://h:1/%69nterrupt", "ollama", "http://h:1/interrupt/api/chat"),
    ("http://h:1/interrupt%2F..%2Fapi%2Fchat", "ollama", "http://h:1/api/chat"),
    ("http://h:1/v1/./chat/completions", "openai-compatible", "http://h:1/v1/chat/completions"),
    ("http://[::1]:8080/v1", "openai-compatible", "http://[::1]:8080/v1/chat/completions"),
    ("http://h/v1?api-version=2", "openai-compatible", "http://h/v1/chat/completions?api-version=2"),
])
def test_urls_are_normalised(url, api, expected):
    assert planner.normalize_url(url, api) == expected


@pytest.mark.parametrize("url,why", [
    ("http://127.0.0.1:8188/interrupt#/api/chat", "fragment"),
    ("http://127.0.0.1:8188/prompt#", "fragment"),
    ("http://127.0.0.1:8188/interrupt%23/api/chat", "'#'"),
    ("http://127.0.0.1:8188/interrupt%3F/api/chat", "'\\?'"),
    ("http://127.0.0.1:8188/a%252e%252e/api/chat", "twice"),
    ("http://127.0.0.1:8188/a%0d%0aX:y", "control"),
    ("ftp://127.0.0.1/api/chat", "http"),
    ("file:///etc/passwd", "http"),
    ("javascript:alert(1)", "http"),
    ("http://admin:hunter2@127.0.0.1:11434", "user:password"),
    ("http:///api/chat", "no host"),
    ("http://127.0.0.1:99999/api/chat", "not a valid URL"),
    ("http://127.0.0.1:11434\\@evil/api/chat", "backslash"),
])
def test_bad_urls_are_refused(url, why):
    with pytest.raises(planner.UrlRefused, match=why) as exc:
        planner.normalize_url(url, "ollama")
    assert "hunter2" not in str(exc.value)


def test_url_aimed_at_comfyui_endpoints_never_reaches_them(mllm_stub):
    with pytest.raises(errors.ConduitError, match="fragment") as exc:
        planner.plan(endpoint(mllm_stub, url=mllm_stub.url + "/interrupt#/api/chat"), with_manual(), NODE)
    assert mllm_stub.requests == [] and "Fix:" in str(exc.value)
    with pytest.raises(errors.ConduitError, match="user:password") as exc:
        planner.plan(endpoint(mllm_stub, url=mllm_stub.url.replace("://", "://me:hunter2@")), with_manual(), NODE)
    assert "hunter2" not in str(exc.value) and mllm_stub.requests == []
    planner.plan(endpoint(mllm_stub, url=mllm_stub.url + "/interrupt/../api/chat"), request(), NODE)
    planner.plan(endpoint(mllm_stub, url=mllm_stub.url + "/interrupt"), request(user_prompt="b"), NODE)
    assert {r["path"] for r in mllm_stub.requests[:3]} == {"/api/chat"}
    assert {r["path"] for r in mllm_stub.requests[3:]} == {"/interrupt/api/chat"}


# ---------------------------------------------------------------------------------------------- redirects

def test_redirect_is_followed_within_the_origin(mllm_stub, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    mllm_stub.script("prompt", ("redirect", 307, "/v1/chat/completions"))
    out = planner.plan(endpoint(mllm_stub, "openai-compatible", api_key_env=KEY_ENV), request(), NODE)
    assert out["prompt"].source == "model"
    assert [r["path"] for r in mllm_stub.requests[:2]] == ["/chat/completions", "/v1/chat/completions"]
    assert mllm_stub.requests[1]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_redirect_to_another_origin_drops_the_key(mllm_stub, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    other = StubMLLM().start()
    try:
        mllm_stub.script("prompt", ("redirect", 308, other.url + "/api/chat"))
        out = planner.plan(endpoint(mllm_stub, api_key_env=KEY_ENV), request(), NODE)
        assert out["prompt"].source == "model"
        assert len(other.requests) == 1 and "Authorization" not in other.requests[0]["headers"]
    finally:
        other.stop()


@pytest.mark.parametrize("location,match", [("/interrupt", "does not end in /api/chat"),
                                            ("http://127.0.0.1:1/api/chat#x", "fragment"),
                                            ("file:///etc/passwd", "only http"),
                                            ("/api/chat", "loop")])
def test_bad_redirects_are_refused(mllm_stub, location, match):
    mllm_stub.script("prompt", ("redirect", 307, location))
    out = planner.plan(endpoint(mllm_stub), with_manual(), NODE)
    assert out["prompt"].source == "manual" and "redirect" in out["prompt"].warning
    assert re.search(match, out["prompt"].notes[0])
    assert len([r for r in mllm_stub.requests if r["stage"] == "prompt"]) == 1


def test_long_redirect_chain_is_refused(mllm_stub):
    mllm_stub.script("prompt", *[("redirect", 302, f"/r{i}/api/chat") for i in range(10)])
    out = planner.plan(endpoint(mllm_stub), with_manual(), NODE)
    assert "more than 5 redirects" in out["prompt"].notes[0]
    assert len([r for r in mllm_stub.requests if r["stage"] == "prompt"]) == 6


# ---------------------------------------------------------------------------------------------- prompt

def test_reply_prompt_weights_are_clamped(mllm_stub):
    mllm_stub.good["prompt"] = {"prompt": "(masterpiece:1e999), a woman (smiling:nan) in (rain:-1e9), (hat:1.2)"}
    out = planner.plan(endpoint(mllm_stub), request(), NODE)
    prompt = out["prompt"].value
    assert prompt == "(masterpiece:2), a woman smiling in (rain:0), (hat:1.2)"
    assert "prompt weights clamped to 0..2" in out["prompt"].notes
    assert all(0.0 <= w <= 2.0 for _, w in reply.comfy_weights(reply._escape(prompt)))


@pytest.mark.parametrize("text", ["(" * 3000 + "x" + ")" * 3000, "((((((((((((((((((((x))))))))))))))))))))",
                                  "(a (b (c (d:9) c) b) a)", "(x:1_000)", "(x:inf) (y:-inf)", "(a:2) \\(b:9\\)"])
def test_sanitized_prompts_are_within_range_and_shallow(text):
    out, notes = reply.sanitize_prompt(text)
    leaves = reply.comfy_weights(reply._escape(out), max_depth=1)
    assert leaves is not None and all(0.0 <= w <= 2.0 for _, w in leaves), (out, leaves)
    assert len(out) <= reply.MAX_PROMPT_CHARS


def test_normal_prompts_pass_unchanged():
    for text in ("a photo of a woman, (smiling:1.2), (detailed)", "plain", "esc \\(x:9\\) literal", "a) (b:5) (c"):
        assert reply.sanitize_prompt(text) == (text, [])


def test_megabyte_prompt_is_capped(mllm_stub):
    mllm_stub.good["prompt"] = {"prompt": "word " * 200_000}
    t0 = time.perf_counter()
    out = planner.plan(endpoint(mllm_stub), request(), NODE)
    assert time.perf_counter() - t0 < 5.0
    assert len(out["prompt"].value) <= planner.MAX_PROMPT_CHARS
    assert any(n.startswith("prompt cut to 4000 characters") for n in out["prompt"].notes)
    # stage 2 was asked with the capped prompt, not the megabyte
    assert max(r["size"] for r in mllm_stub.requests) < 8000


# ---------------------------------------------------------------------------------------------- interrupt

def test_interrupt_mid_read_stops_the_call(mllm_stub):
    mllm_stub.script("prompt", ("drip", 0.2))
    stats = transport.ReadStats()
    t0 = time.perf_counter()
    with pytest.raises(transport.Interrupted):
        direct(mllm_stub, stats, deadline_s=60.0, interrupted=lambda: stats.chunks >= 1)
    assert time.perf_counter() - t0 < 3.0 and 1 <= stats.chunks <= 5
    time.sleep(1.0)  # the call's socket was shut down, so the server's next writes fail and it stops dripping
    sent = mllm_stub.dripped
    time.sleep(1.0)
    assert mllm_stub.dripped == sent, "the abandoned connection is still being served"


def test_interrupt_while_waiting_for_headers_is_not_a_fallback(mllm_stub):
    mllm_stub.script("prompt", ("slow", 30.0))
    start = time.perf_counter()
    fired = threading.Event()

    def interrupted():
        if time.perf_counter() - start > 0.3:
            fired.set()
        return fired.is_set()

    with pytest.raises(planner.Interrupted):
        planner.plan(endpoint(mllm_stub, timeout=60.0), with_manual(), NODE, interrupted=interrupted)
    assert time.perf_counter() - start < 3.0


def test_interrupt_cuts_the_connection_of_a_waiting_request(mllm_stub):
    """The worker thread does not linger until the server answers: its socket is shut down."""
    def workers():
        return {t for t in threading.enumerate() if t.name == "conduit-mllm-http"}

    before = workers()
    mllm_stub.script("prompt", ("slow", 10.0))
    start = time.perf_counter()
    with pytest.raises(transport.Interrupted):
        direct(mllm_stub, transport.ReadStats(), deadline_s=60.0,
               interrupted=lambda: time.perf_counter() - start > 0.3)
    t0 = time.perf_counter()
    while workers() - before and time.perf_counter() - t0 < 3.0:
        time.sleep(0.05)
    assert not workers() - before


def test_planner_modules_import_without_comfyui():
    import subprocess
    import sys

    from conduit.host import REPO_ROOT

    mods = ["patches.sow.planner"] + [f"patches.sow.planner.{m}" for m in ("transport", "prompts", "reply", "cache",
                                                                     "secrets", "plan", "endpoint")]
    code = ("import sys; sys.path.insert(0, '.'); import conduit; "
            + "".join(f"import conduit_pack.{m}; " for m in mods) +
            "bad = [k for k in sys.modules if k == 'comfy' or k.startswith('comfy.')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
