"""The headless runner without a ComfyUI: argument parsing, --set checks against an /object_info, workflow
names, the demo model's size, server error formatting, prompt clean-up (against a stub HTTP server), and
every user mistake as one line on stderr with exit status 2 and no traceback."""
import ast
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conduit import jobs, overrides, workflow
from conduit.client import ComfyClient, format_prompt_error, parse_server_url
from conduit.errors import UsageError
from conduit.host import REPO_ROOT

SEG = workflow.load_api("seg_sdxl")

OBJECT_INFO = {
    "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]}}},
    "KSampler": {"input": {"required": {
        "model": ["MODEL"], "seed": ["INT", {"default": 0, "min": 0, "max": 2**64 - 1}],
        "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
        "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}],
        "sampler_name": [["euler", "heun", "dpmpp_2m"]], "scheduler": ["COMBO", {"options": ["normal", "karras"]}],
        "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "latent_image": ["LATENT"],
        "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}]}}},
    "EmptyLatentImage": {"input": {"required": {"width": ["INT", {"min": 16, "max": 16384}],
                                                "height": ["INT", {"min": 16, "max": 16384}],
                                                "batch_size": ["INT", {"min": 1, "max": 4096}]}}},
    "ConduitSmoothedEnergyGuidance": {"input": {"required": {"model": ["MODEL"], "scale": ["FLOAT", {}],
                                                             "layers": [["middle", "all"]]},
                                                "optional": {"rescale": ["FLOAT", {"min": 0.0, "max": 1.0}],
                                                             "flag": ["BOOLEAN", {}]}}},
    workflow.DEMO_LOADER: {"input": {"required": {}}},
}


def check(*texts, graph=SEG, info=OBJECT_INFO):
    sets = [overrides.parse_set(t, graph) for t in texts]
    overrides.check_nodes(sets, graph, "seg_sdxl")
    return overrides.validate(sets, jobs.prepare_graph(graph, "embedded"), info)


# ---- parsing ------------------------------------------------------------------------------------------------

def test_parse_seeds():
    assert jobs.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert jobs.parse_seeds(" 5 ") == [5]
    assert jobs.parse_seeds(None) == [None] and jobs.parse_seeds("") == [None]


@pytest.mark.parametrize("text, message", [
    ("0..3", "--seeds 0..3: write a range with one dash: --seeds 0-3, or list them: --seeds 0,1,2,3"),
    ("5-2", "a range goes low-high, e.g. --seeds 2-5"),
    ("x", "seeds are whole numbers from 0 up"),
    ("1,,2", "seeds are whole numbers"),
    ("-1", "seeds are whole numbers"),
])
def test_parse_seeds_mistakes(text, message):
    with pytest.raises(UsageError, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        jobs.parse_seeds(text)


def test_parse_set_values():
    a = overrides.parse_set("6.cfg=4.5", SEG)
    assert (a.node_id, a.name, a.value, a.raw) == ("6", "cfg", 4.5, "4.5")
    assert overrides.parse_set("2.text=a cat", SEG).value == "a cat"
    assert overrides.parse_set("2.text=", SEG).value == ""
    assert overrides.parse_set("2.text=x=y", SEG).value == "x=y"


@pytest.mark.parametrize("text, message", [
    ("cfg=4", "--set cfg=4: name the node too, as NODE.INPUT=VALUE; cfg is on node 6 (KSampler) and node 9 "
              "(KSampler): type --set 6.cfg=4"),
    (".cfg=4", "name the node too"),
    ("3.cfg", "--set 3.cfg: no value; write NODE.INPUT=VALUE; cfg is on node 6 (KSampler) and node 9 (KSampler): "
              "type --set 6.cfg=5.0"),
    ("6.cfg", "--set 6.cfg: no value; write NODE.INPUT=VALUE; e.g. --set 6.cfg=5.0 (its value now)"),
])
def test_parse_set_mistakes(text, message):
    with pytest.raises(UsageError) as info:
        overrides.parse_set(text, SEG)
    assert message in str(info.value)


def test_unknown_node_id_names_the_nodes_and_where_the_input_is():
    with pytest.raises(UsageError) as info:
        check("12.cfg=4")
    msg = str(info.value)
    assert msg.startswith("--set 12.cfg=4: seg_sdxl has no node 12 (its nodes: 1 CheckpointLoaderSimple, ")
    assert msg.endswith("cfg is on node 6 (KSampler) and node 9 (KSampler): type --set 6.cfg=4")


# ---- --set against /object_info -----------------------------------------------------------------------------

def test_valid_sets_are_coerced_to_what_comfyui_takes():
    assert check("6.cfg=4", "6.steps=3.0", "6.sampler_name=heun", "6.scheduler=karras", "2.text=42",
                 "5.flag=true", "6.model=[\"5\", 0]") == [4.0, 3, "heun", "karras", "42", True, ["5", 0]]
    assert isinstance(check("6.cfg=4")[0], float) and isinstance(check("6.steps=3.0")[0], int)


@pytest.mark.parametrize("text, message", [
    ("3.cfg=4.0", "--set 3.cfg=4.0: node 3 is CLIPTextEncode (inputs: text, clip); cfg is on node 6 (KSampler) "
                  "and node 9 (KSampler): type --set 6.cfg=4.0"),
    ("6.cfgg=4", "node 6 is KSampler (inputs: model, seed, steps, cfg, sampler_name, scheduler, positive, "
                 "negative, latent_image, denoise); no node in this workflow has an input 'cfgg'; did you mean "
                 "--set 6.cfg=4?"),
    ("5.rescale=2", "ConduitSmoothedEnergyGuidance.rescale (node 5) must be between 0 and 1, not 2"),
    ("6.steps=0", "KSampler.steps (node 6) must be between 1 and 10000, not 0"),
    ("6.steps=4.5", "KSampler.steps (node 6) takes a whole number, not '4.5'; e.g. --set 6.steps=20"),
    ("6.steps=true", "takes a whole number"),
    ("6.cfg=high", "KSampler.cfg (node 6) takes a number, not 'high'; e.g. --set 6.cfg=8.0"),
    ("6.cfg=NaN", "KSampler.cfg (node 6) takes a finite number, not NaN; it must be between 0 and 100"),
    ("6.cfg=-Infinity", "takes a finite number, not -Infinity"),
    ("5.scale=Infinity", "takes a finite number, not Infinity"),
    ("6.sampler_name=eulr", "'eulr' is not a choice of KSampler.sampler_name (node 6) (did you mean euler?); "
                            "choices: euler, heun, dpmpp_2m"),
    ("6.scheduler=simple", "not a choice of KSampler.scheduler (node 6)"),
    ("5.flag=1", "ConduitSmoothedEnergyGuidance.flag (node 5) is true or false, not '1'"),
    ("6.model=3", "KSampler.model (node 6) is a MODEL connection, not a value"),
    ("6.model=[\"77\", 0]", "is a MODEL connection"),
    ("1.ckpt_name=x.safetensors", "node 1 is ConduitDemoToyModelLoader (inputs: none) (--model embedded put the "
                                  "demo model here; add --model keep"),
])
def test_set_mistakes_against_object_info(text, message):
    with pytest.raises(UsageError) as info:
        check(text)
    assert message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_class_the_server_lacks():
    info = {k: v for k, v in OBJECT_INFO.items() if k != "ConduitSmoothedEnergyGuidance"}
    with pytest.raises(UsageError, match="node 5 is ConduitSmoothedEnergyGuidance, which the server does not have"):
        check("5.scale=2", info=info)
    with pytest.raises(UsageError, match="does not have the node class.*ConduitSmoothedEnergyGuidance"):
        jobs.check_server_has(jobs.prepare_graph(SEG, "embedded"), info, "http://x:1", "embedded")
    no_demo = {k: v for k, v in OBJECT_INFO.items() if k != workflow.DEMO_LOADER}
    with pytest.raises(UsageError, match="has no ConduitDemoToyModelLoader.*--model keep"):
        jobs.check_server_has(jobs.prepare_graph(SEG, "embedded"), no_demo, "http://x:1", "embedded")


# ---- the demo model's own size ------------------------------------------------------------------------------

def test_demo_size_is_the_toy_models_training_size():
    tree = ast.parse((REPO_ROOT / "toyworld" / "demo_model.py").read_text())
    sizes = [n.value.value for n in tree.body if isinstance(n, ast.Assign)
             and any(getattr(t, "id", "") == "IMAGE_SIZE" for t in n.targets)]
    assert sizes == [jobs.DEMO_SIZE] == [64]


@pytest.mark.parametrize("name", workflow.short_names())
def test_embedded_runs_at_the_demo_size_and_few_steps(name):
    if workflow.is_dit_graph(workflow.load_api(name)):
        with pytest.raises(UsageError, match="SD3/Flux workflow.*SD1.5-shaped.*--model keep"):
            jobs.prepare_graph(workflow.load_api(name), "embedded")
        g = jobs.prepare_graph(workflow.load_api(name), "tiny-flux")
        assert {n["class_type"] for n in g.values()} & set(workflow.DIT_MODEL_LOADERS) == set()
        assert all(v != ["1", 0] or g["1"]["class_type"] == workflow.DIT_TEST_LOADER
                   for n in g.values() for v in n["inputs"].values())
        sd3 = jobs.prepare_graph(workflow.load_api(name), "tiny-sd3")
        assert [n["inputs"]["topology"] for n in sd3.values() if n["class_type"] == workflow.DIT_TEST_LOADER] \
            == ["sd35l_keys"]  # the shipped SD3.5-Large table's 38 blocks
        assert all(n["inputs"][k] <= jobs.TINY_DIT_MAX_SIDE for n in sd3.values()
                   if n["class_type"] == "EmptySD3LatentImage" for k in ("width", "height"))
        return
    g = jobs.prepare_graph(workflow.load_api(name), "embedded")
    for node in g.values():
        inputs = node["inputs"]
        if node["class_type"] in jobs.SIZE_INPUTS:
            for key in jobs.SIZE_INPUTS[node["class_type"]]:
                assert inputs[key] == jobs.DEMO_SIZE, (node, key)
        if node["class_type"] in jobs.STEP_CLASSES:
            assert inputs["steps"] <= jobs.DEMO_STEPS
        if node["class_type"] == "ConduitCOWSeedCanvas":
            assert inputs["box_x"] + inputs["box_w"] <= jobs.DEMO_SIZE
            assert inputs["box_y"] + inputs["box_h"] <= jobs.DEMO_SIZE
        assert node["class_type"] != "CheckpointLoaderSimple"


def test_sets_win_over_the_demo_size_and_keep_leaves_the_workflow_alone():
    sets = [overrides.parse_set(t, SEG) for t in ("4.width=128", "6.steps=30")]
    g = jobs.prepare_graph(SEG, "embedded", sets, OBJECT_INFO)
    assert (g["4"]["inputs"]["width"], g["4"]["inputs"]["height"], g["6"]["inputs"]["steps"]) == (128, 64, 30)
    assert g["9"]["inputs"]["steps"] == jobs.DEMO_STEPS
    kept = jobs.prepare_graph(SEG, "keep")
    assert kept == SEG and kept is not SEG
    assert SEG["4"]["inputs"]["width"] == 1024  # the loaded workflow is never edited in place


def test_demo_uses_the_same_size():
    from conduit.jobs import demo_graph

    g = demo_graph(workflow.load_api("txt2img_vanilla"), "embedded")
    assert g["5"]["inputs"]["width"] == jobs.DEMO_SIZE and g["3"]["inputs"]["steps"] == jobs.DEMO_STEPS


# ---- workflows and servers ----------------------------------------------------------------------------------

def test_workflow_by_short_name_prefix_and_path(tmp_path, monkeypatch):
    seg = workflow.WORKFLOW_DIR / "seg_sdxl.api.json"
    assert workflow.resolve_workflow("seg_sdxl") == seg
    assert workflow.resolve_workflow("seg_s") == seg
    monkeypatch.chdir(tmp_path)  # paths relative to the repository work from anywhere
    for text in ("workflows/seg_sdxl.api.json", "workflows/seg_sdxl", str(seg), str(seg)[: -len(".api.json")]):
        assert workflow.resolve_workflow(text).resolve() == seg.resolve(), text
    own = tmp_path / "mine.api.json"
    own.write_text(json.dumps(SEG))
    assert workflow.resolve_workflow("mine") == Path("mine.api.json")
    assert workflow.resolve_workflow(str(tmp_path / "mine")) == own
    assert workflow.workflow_name(own) == "mine"


def test_workflow_mistakes(tmp_path):
    with pytest.raises(UsageError,
                       match="'s' is ambiguous: it could be seg_flux, seg_sdxl, sensitivity_analysis, sow_mllm"):
        workflow.resolve_workflow("s")
    with pytest.raises(UsageError, match="no workflow named 'nope'; available: balanced_style_controlnet_sdxl"):
        workflow.resolve_workflow("nope")
    with pytest.raises(UsageError) as info:
        workflow.resolve_workflow("workflows/x.api.json")
    assert "no workflow file workflows/x.api.json;" in str(info.value) and ".api.json.api.json" not in str(info.value)
    bad = tmp_path / "bad.api.json"
    bad.write_text('{"1": {"class_type": "X", "inputs": {}},}')
    with pytest.raises(UsageError, match=r"bad.api.json is not valid JSON \(line 1, column 41"):
        workflow.load_api(str(bad))
    with pytest.raises(UsageError, match="is an editor \\(UI-format\\) workflow.*seg_sdxl.api.json"):
        workflow.load_api("example_workflows/seg_sdxl.json")
    (tmp_path / "list.api.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="not an API-format workflow"):
        workflow.load_api(str(tmp_path / "list.api.json"))


@pytest.mark.parametrize("text, url", [
    ("127.0.0.1:8188", "http://127.0.0.1:8188"), ("gpu-a:8188/", "http://gpu-a:8188"),
    ("https://h.example/comfy/", "https://h.example/comfy"), (" http://[::1]:8188 ", "http://[::1]:8188"),
])
def test_server_urls(text, url):
    assert parse_server_url(text) == url


@pytest.mark.parametrize("text, message", [
    ("ftp://x", "--server ftp://x: ComfyUI speaks http:// or https://, not ftp://; e.g. --server http://x"),
    ("gpu-a:abc", "--server gpu-a:abc: the port must be a number from 1 to 65535, e.g. --server http://gpu-a:8188"),
    ("http://", "no host name in it"), ("", "--server needs an address"),
    ("http://h:1?x=1", "without ?query or #fragment"),
])
def test_server_url_mistakes(text, message):
    with pytest.raises(UsageError) as info:
        parse_server_url(text)
    assert message in str(info.value)


def test_readme_example_sets_inputs_that_exist():
    """Each --set of the README's runner command names a node of that workflow that has the input."""
    text = (REPO_ROOT / "README.md").read_text()
    command = re.search(r"python -m conduit run (.+?)\n```", text, re.S).group(1).replace("\\\n", " ").split()
    graph = workflow.load_api(command[0])
    sets = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    assert sets
    for a in (overrides.parse_set(t, graph) for t in sets):
        assert a.name in graph[a.node_id]["inputs"], a.text
    assert graph["6"]["class_type"] == graph["9"]["class_type"] == "KSampler"


# ---- server errors, whole and readable ---------------------------------------------------------------------

def test_prompt_errors_are_whole_and_one_line_per_node_error():
    long_detail = "ckpt_name: 'sd_xl_base_1.0.safetensors' not in " + str([f"model_{i}.safetensors" for i in range(40)])
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "", "extra_info": {}},
            "node_errors": {
                "1": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                  "details": long_detail, "extra_info": {"input_name": "ckpt_name"}}],
                      "dependent_outputs": ["8"], "class_type": "CheckpointLoaderSimple"},
                "6": {"errors": [{"type": "value_smaller_than_min", "message": "Value smaller than min of 1",
                                  "details": "steps", "extra_info": {"input_name": "steps", "received_value": 0}},
                                 {"type": "required_input_missing", "message": "Required input is missing",
                                  "details": "model", "extra_info": {"input_name": "model"}}],
                      "dependent_outputs": ["8"], "class_type": "KSampler"}}}
    lines = format_prompt_error(body).splitlines()
    assert lines[0] == "Prompt outputs failed validation"
    assert lines[1] == f"  node 1 (CheckpointLoaderSimple) input ckpt_name: Value not in list: {long_detail}"
    assert len(lines[1]) > 400  # never cut
    assert lines[2] == "  node 6 (KSampler) input steps: Value smaller than min of 1: steps (got 0)"
    assert lines[3] == "  node 6 (KSampler) input model: Required input is missing: model"
    assert format_prompt_error({"error": "no prompt", "node_errors": []}) == "no prompt"


class StubComfy(BaseHTTPRequestHandler):
    """GET /queue answers what the test put in `state`; POSTs are recorded."""
    state: dict = {}

    def log_message(self, *args):
        pass

    def _reply(self, payload: bytes = b"", code: int = 200):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        s = self.state
        if self.path == "/queue":
            running = [[0, p, {}, {}, []] for p in s["running"]]
            pending = [[1, p, {}, {}, []] for p in s["pending"]]
            return self._reply(json.dumps({"queue_running": running, "queue_pending": pending}).encode())
        if self.path == "/system_stats" and s.get("comfy", True):
            return self._reply(b"{}")
        return self._reply(b"not found", 404)

    def do_POST(self):
        s = self.state
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        s["calls"].append((self.path, body))
        if self.path == "/queue":
            s["pending"] = [p for p in s["pending"] if p not in body.get("delete", [])]
        if self.path == "/interrupt" and s["running"] and s.get("interruptible", True):
            s["running"] = []
        return self._reply()


@pytest.fixture
def stub():
    StubComfy.state = {"running": [], "pending": [], "calls": []}
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubComfy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, StubComfy.state
    server.shutdown()
    server.server_close()


def test_cancel_deletes_a_queued_prompt_and_never_interrupts_another_users(stub):
    server, state = stub
    state.update(running=["theirs"], pending=["ours", "other"])
    client = ComfyClient(f"http://127.0.0.1:{server.server_port}")
    assert client.cancel("ours") == "removed from the queue"
    assert state["pending"] == ["other"] and state["running"] == ["theirs"]
    assert [p for p, _ in state["calls"]] == ["/queue"]  # no /interrupt: the running prompt is not ours


def test_cancel_interrupts_only_our_running_prompt(stub):
    server, state = stub
    state.update(running=["ours"], pending=["theirs"])
    client = ComfyClient(f"http://127.0.0.1:{server.server_port}")
    assert client.cancel("ours") == "interrupted"
    assert ("/interrupt", {"prompt_id": "ours"}) in state["calls"] and state["pending"] == ["theirs"]


def test_cancel_says_when_a_prompt_would_not_stop(stub):
    server, state = stub
    state.update(running=["ours"], interruptible=False)
    client = ComfyClient(f"http://127.0.0.1:{server.server_port}")
    assert client.cancel("ours", settle=0.5).startswith("still running")


# ---- the command line: one line, exit 2, no traceback -------------------------------------------------------

def run_cli(*args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, "-m", "conduit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def one_line_error(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("INFO ")]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, lines
    return lines[0]


NO_SERVER = ["--server", "http://127.0.0.1:9"]  # checks that need no server happen before it is asked


@pytest.mark.parametrize("args, expected", [
    (["seg_sdxl", "--set", "12.cfg=4"], "--set 12.cfg=4: seg_sdxl has no node 12 (its nodes: 1 Checkpoint"),
    (["seg_sdxl", "--set", "cfg=4"], "name the node too, as NODE.INPUT=VALUE; cfg is on node 6 (KSampler)"),
    (["seg_sdxl", "--set", "3.cfg"], "--set 3.cfg: no value; write NODE.INPUT=VALUE"),
    (["seg_sdxl", "--seeds", "0..3"], "--seeds 0-3, or list them: --seeds 0,1,2,3"),
    (["workflows/x.api.json"], "no workflow file workflows/x.api.json; give the path of an existing .api.json "
                               "file, or a short name (balanced_style_controlnet_sdxl, "),
    (["nope"], "no workflow named 'nope'; available: "),
    (["s"], "workflow 's' is ambiguous: it could be seg_flux, seg_sdxl, sensitivity_analysis, sow_mllm; "
            "type one of them"),
    (["seg_sdxl", "--server", "ftp://x"], "ComfyUI speaks http:// or https://"),
    (["seg_sdxl", "--server", "gpu-a:abc"], "the port must be a number"),
    (["seg_sdxl", "--server", "127.0.0.1:9"], "ComfyUI at http://127.0.0.1:9 does not answer: it refuses the "
                                         "connection (nothing listens on that port); start ComfyUI there"),
    (["seg_sdxl", "--model", "big"], "argument --model: invalid choice: 'big'"),
    (["seg_sdxl", "--timeout", "soon"], "argument --timeout: 'soon' is not a number of seconds"),
])
def test_mistakes_are_one_line_and_exit_2(args, expected):
    line = one_line_error(run_cli("run", *args, *([] if "--server" in args else NO_SERVER)))
    assert line.startswith("python -m conduit run: ") and expected in line, line
    assert ".api.json.api.json" not in line and "workflows/workflows" not in line


def test_workflow_file_that_is_not_json(tmp_path):
    bad = tmp_path / "broken.api.json"
    bad.write_text('{"1": {"class_type": "KSampler",')
    line = one_line_error(run_cli("run", str(bad), *NO_SERVER))
    assert "broken.api.json is not valid JSON (line 1" in line


def test_seeds_for_a_workflow_without_seeds(tmp_path):
    (tmp_path / "noseed.api.json").write_text(json.dumps({"1": {"class_type": "EmptyLatentImage", "inputs": {}}}))
    line = one_line_error(run_cli("run", "noseed", "--seeds", "1", *NO_SERVER, cwd=tmp_path))
    assert "--seeds 1: noseed has no seed input to set; drop --seeds" in line


def test_a_server_that_is_not_comfyui(stub):
    server, state = stub
    state["comfy"] = False
    line = one_line_error(run_cli("run", "seg_sdxl", "--server", f"127.0.0.1:{server.server_port}"))
    assert "answers HTTP 404 on /system_stats, so it is not a ComfyUI server" in line

