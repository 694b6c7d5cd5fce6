"""The headless runner CLI on real servers: overrides checked against a live /object_info, seeds spread over
two servers, and runs that fail, are cancelled (SIGINT) or time out leave nothing on any server's /queue."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from conduit import jobs, overrides, workflow
from conduit.client import ComfyClient
from conduit.errors import UsageError
from conduit.host import REPO_ROOT, find_host
from conduit.server import TEST_NODES, ComfyServer

LONG = 10000  # KSampler's max steps: a run that is still going when the test stops it
CLI = [sys.executable, "-m", "conduit", "run"]


@pytest.fixture(scope="module")
def second_server():
    with ComfyServer(find_host(), extra_node_dirs=[TEST_NODES]) as server:
        yield server


def run_cli(*args, timeout=600):
    return subprocess.run([*CLI, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def start_cli(*args):
    return subprocess.Popen([*CLI, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def queue_of(server) -> dict:
    """GET /queue as ComfyUI sends it, cut down to the prompt ids: {'queue_running': [...], 'queue_pending': [...]}."""
    q = server.client().get_json("/queue")
    return {k: [item[1] for item in q[k]] for k in ("queue_running", "queue_pending")}


EMPTY = {"queue_running": [], "queue_pending": []}


def ctrl_c_once(proc, ready, what: str) -> str:
    """Ctrl-C the runner once `ready()` holds; its stderr. It must exit as cancelled (130)."""
    try:
        wait_until(ready, what=what)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    return err


def wait_until(predicate, timeout=180.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def history_count(server) -> int:
    return len(server.client().get_json("/history"))


# ---- overrides against the live /object_info ----------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("3.cfg=4.0", "node 3 is CLIPTextEncode (inputs: text, clip); cfg is on node 6 (KSampler) and node 9 "
                  "(KSampler): type --set 6.cfg=4.0"),
    ("6.steps=0", "KSampler.steps (node 6) must be between 1 and 10000, not 0"),
    ("6.cfg=NaN", "KSampler.cfg (node 6) takes a finite number, not NaN"),
    ("6.seed=1.5", "KSampler.seed (node 6) takes a whole number"),
    ("6.sampler_name=eulr", "'eulr' is not a choice of KSampler.sampler_name (node 6) (did you mean euler?); "
                            "choices: euler, "),
    ("6.scheduler=fast", "not a choice of KSampler.scheduler (node 6)"),
    ("5.layers=everything", "not a choice of ConduitSmoothedEnergyGuidance.layers (node 5)"),
    ("5.rescale=3", "ConduitSmoothedEnergyGuidance.rescale (node 5) must be between 0"),
    ("5.scale=lots", "ConduitSmoothedEnergyGuidance.scale (node 5) takes a number"),
    ("7.samples=1", "VAEDecode.samples (node 7) is a LATENT connection, not a value"),
    ("1.ckpt_name=x", "node 1 is ConduitDemoToyModelLoader (inputs: none) (--model embedded put the demo model "
                      "here"),
])
def test_set_checked_against_live_object_info(object_info, text, message):
    seg = workflow.load_api("seg_sdxl")
    sets = [overrides.parse_set(text, seg)]
    with pytest.raises(UsageError) as info:
        jobs.prepare_graph(seg, "embedded", sets, object_info)
    assert message in str(info.value), str(info.value)


def test_good_sets_pass_the_live_object_info(object_info):
    seg = workflow.load_api("seg_sdxl")
    sets = [overrides.parse_set(t, seg) for t in ("6.cfg=4", "6.sampler_name=heun", "6.scheduler=karras",
                                                  "5.layers=all", "2.text=7", "4.width=128")]
    g = jobs.prepare_graph(seg, "embedded", sets, object_info)
    assert (g["6"]["inputs"]["cfg"], g["6"]["inputs"]["sampler_name"], g["2"]["inputs"]["text"]) == (4.0, "heun", "7")


def test_cli_rejects_bad_sets_before_queueing_anything(comfy_server, tmp_path):
    before = history_count(comfy_server)
    for text, expected in (("3.cfg=4.0", "cfg is on node 6 (KSampler) and node 9 (KSampler)"),
                           ("6.sampler_name=eulr", "did you mean euler?")):
        proc = run_cli("seg_sdxl", "--set", text, "--server", comfy_server.url, "--out", str(tmp_path), timeout=120)
        lines = [line for line in proc.stderr.splitlines() if not line.startswith("INFO ")]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(lines) == 1 and expected in lines[0], lines
    assert history_count(comfy_server) == before and queue_of(comfy_server) == EMPTY


def test_readme_example_runs_on_the_demo_model_at_its_own_size(comfy_server, tmp_path):
    """The README's command (with a local --server): --set on both KSamplers, two seeds, the demo model."""
    proc = run_cli("seg_sdxl", "--set", "6.cfg=4.0", "--set", "9.cfg=4.0", "--seeds", "0-1",
                   "--server", comfy_server.url.split("//")[1], "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = sorted(tmp_path.glob("*.png"))
    assert len(saved) == 4 and {Image.open(p).size for p in saved} == {(jobs.DEMO_SIZE, jobs.DEMO_SIZE)}


def test_runner_spreads_seeds_over_two_servers(comfy_server, second_server, tmp_path):
    urls = [comfy_server.url, second_server.url]
    before = [history_count(comfy_server), history_count(second_server)]
    proc = run_cli("txt2img_vanilla", "--model", "tiny-sdxl", "--seeds", "0-3",
                   "--set", "5.width=128", "--set", "5.height=128", "--set", "3.steps=2",
                   "--server", urls[0], "--server", urls[1], "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(saved) == 4 and all(f"_s{s}_" in " ".join(saved) for s in range(4))
    after = [history_count(comfy_server), history_count(second_server)]
    assert all(a - b >= 2 for a, b in zip(after, before)), (before, after)


# ---- failures, cancels and timeouts leave nothing behind ----------------------------------------------------

def test_partly_invalid_graph_fails_and_its_valid_branch_is_taken_off_the_server(comfy_server, tmp_path):
    """ComfyUI queues the valid output of a partly invalid graph (here a long SEG branch) beside node_errors;
    the runner reports the node error and removes (or interrupts) that prompt."""
    assert queue_of(comfy_server) == EMPTY
    graph = workflow.load_api("seg_sdxl")
    graph["9"]["inputs"]["sampler_name"] = "no_such_sampler"
    path = tmp_path / "half_broken.api.json"
    path.write_text(json.dumps(graph))
    proc = run_cli(str(path), "--model", "tiny-sdxl", "--set", f"6.steps={LONG}", "--server", comfy_server.url,
                   "--out", str(tmp_path), timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "part of the graph failed validation" in proc.stderr
    assert re.search(r"node 9 \(KSampler\) input sampler_name: .*no_such_sampler", proc.stderr), proc.stderr
    # nothing running or pending from us, right after the runner exits (what the runner did is in its stderr)
    assert queue_of(comfy_server) == EMPTY, proc.stderr[-3000:]
    (prompt_id,) = re.findall(r"queued the valid part as ([0-9a-f-]+); (?:removed from the queue|interrupted)",
                              proc.stderr)
    entry = comfy_server.client().get_json(f"/history/{prompt_id}").get(prompt_id)
    assert entry is None or entry["status"]["status_str"] == "error"  # never ran, or interrupted


def long_run_args(*servers, seeds="0-3"):
    return ["txt2img_vanilla", "--model", "tiny-sdxl", "--seeds", seeds, "--set", f"3.steps={LONG}",
            "--set", "5.width=64", "--set", "5.height=64", *[a for s in servers for a in ("--server", s.url)]]


def test_sigint_on_a_two_server_run_leaves_both_queues_empty(comfy_server, second_server, tmp_path):
    servers = (comfy_server, second_server)
    assert all(queue_of(s) == EMPTY for s in servers)
    proc = start_cli(*long_run_args(*servers), "--out", str(tmp_path))
    err = ctrl_c_once(proc, lambda: all(len(queue_of(s)["queue_running"]) == 1 for s in servers),
                      "a run on each server")
    assert [queue_of(s) for s in servers] == [EMPTY, EMPTY]
    assert err.count("CANCELLED") == 2 and err.count("interrupted") == 2, err[-3000:]
    assert "cancelled; nothing left on the servers" in err and "Traceback" not in err


def test_sigint_removes_our_queued_prompt_and_spares_another_users_running_one(comfy_server, tmp_path):
    """Another client's long prompt is running; ours waits behind it. Ctrl-C deletes ours from the queue and
    does not interrupt theirs."""
    assert queue_of(comfy_server) == EMPTY
    other = ComfyClient(comfy_server.url)
    theirs_graph = workflow.swap_loaders(workflow.load_api("txt2img_vanilla"), "sdxl")
    workflow.set_all(theirs_graph, "KSampler", steps=LONG)
    workflow.set_all(theirs_graph, "EmptyLatentImage", width=64, height=64)
    theirs = other.submit(theirs_graph)
    try:
        wait_until(lambda: queue_of(comfy_server)["queue_running"] == [theirs], what="the other prompt to run")
        proc = start_cli(*long_run_args(comfy_server, seeds="5"), "--out", str(tmp_path))
        err = ctrl_c_once(proc, lambda: len(queue_of(comfy_server)["queue_pending"]) == 1, "our prompt to queue")
        assert "removed from the queue" in err
        assert queue_of(comfy_server) == {"queue_running": [theirs], "queue_pending": []}
    finally:
        assert other.cancel(theirs) == "interrupted"
    assert queue_of(comfy_server) == EMPTY


def test_timed_out_run_is_interrupted(comfy_server, second_server, tmp_path):
    servers = (comfy_server, second_server)
    proc = run_cli(*long_run_args(*servers, seeds="0-1"), "--timeout", "8", "--out", str(tmp_path), timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count("timed out after 8s") == 2 and "Traceback" not in proc.stderr
    assert [queue_of(s) for s in servers] == [EMPTY, EMPTY]
