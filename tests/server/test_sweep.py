"""The hardening sweep, kept as a test: every Conduit node gets each kind of bad input through /prompt, a
hostile MLLM endpoint, other packs' attention patches in chains, and an interrupt in each long loop.

After every node's cases the server must be alive and a canary graph bit-identical to its first run. The
sweep counts, per node, what it tried; a failing run prints the cases that went wrong.
Accepted outcomes of a bad input: ComfyUI's own validation refuses it, or the node raises ConduitError
(named node, input and fix). Not accepted: a run that succeeds with NaN or infinity ("silent NaN"), any
other exception type ("raw"), a table path that gets opened ("is not valid JSON" and the like).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import threading
import time
from collections import Counter

import re

import pytest
from PIL import Image

from conduit import workflow
from conduit.client import PromptRejected

KEY_ENV = "CONDUIT_TEST_MLLM_KEY"  # the same variable the COW server tests use; read when the server starts
KEY = "sk-conduit-test-KEY-7f3a9"
os.environ.setdefault(KEY_ENV, KEY)

HOSTILE_STRINGS = ["\x00", "o" + "9" * 5000, "1e-300", ",,, ,", "\U0001f600", "x" * 20000]
HOSTILE_PATHS = ["/etc/passwd", "../../../../etc/passwd", "/proc/self/environ", "/dev/zero", "/tmp", "a\x00b"]
NON_FINITE = [math.nan, math.inf, -math.inf]
NAMED = re.compile(r"^\[Conduit [^\]]+\] .+ Fix: ", re.S)  # ConduitError's form (subclasses included)
OPENED = ("valid JSON", "Expecting value", "UnicodeDecodeError", "JSONDecodeError")


def base_nodes() -> dict:
    """Producers for every socket a Conduit node takes, on the tiny SD1.5 test model at 64x64."""
    return {
        "ckpt": {"class_type": "ConduitTestTinyCheckpoint", "inputs": {"family": "sd15", "seed": 0}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red star", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "image": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "mask": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": "normal",
                                                                "steps": 4, "denoise": 1.0}},
        "cnet": {"class_type": "ConduitTestTinyControlNet", "inputs": {"family": "sd15", "seed": 3}},
    }


# Defaults sized for a user's GPU; the sweep runs each node small (a bad value still replaces one of these).
SMALL = {"ConduitSensitivityAnalysis": {"steps": 2, "width": 64, "height": 64, "samples_per_group": 2},
         "ConduitGradSAMKSampler": {"steps": 4}, "ConduitCOWSeedCanvas": {"canvas_width": 64, "canvas_height": 64},
         "ConduitMLLMPlan": {"timeout": 2.0, "canvas_width": 64, "canvas_height": 64},
         "ConduitModelLayers": {"width": 64, "height": 64}}

SOCKETS = {"MODEL": ["ckpt", 0], "CLIP": ["ckpt", 1], "VAE": ["ckpt", 2], "CONDITIONING": ["pos", 0],
           "LATENT": ["latent", 0], "IMAGE": ["image", 0], "MASK": ["mask", 0], "SIGMAS": ["sigmas", 0],
           "CONTROL_NET": ["cnet", 0]}


def widget_default(decl: list):
    kind, opts = decl[0], decl[1] if len(decl) > 1 else {}
    choices = workflow.combo_choices(decl)
    if choices is not None:
        return opts.get("default", choices[0] if choices else "")
    return opts.get("default", {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind))


class GraphBuilder:
    """A graph that runs one node with its defaults, every socket wired from a producer (Conduit's own types
    from the Conduit node that makes them), ending in the test sink."""

    def __init__(self, info: dict) -> None:
        self.info = info
        # a loader before a node that computes the same type (the analysis would make every table case slow)
        self.makers = {"SENSITIVITY_TABLE": ("ConduitLoadSensitivityTable", 0)}
        for nid, node in info.items():
            if nid.startswith("Conduit") and not nid.startswith("ConduitTest"):
                for i, t in enumerate(node["output"]):
                    self.makers.setdefault(t, (nid, i))

    def node(self, graph: dict, class_type: str, name: str, depth: int = 0) -> str:
        inputs = {}
        for key, decl in self.info[class_type]["input"]["required"].items():
            inputs[key] = self.wire(graph, decl[0], depth) if self.is_socket(decl) else widget_default(decl)
        graph[name] = {"class_type": class_type, "inputs": inputs}
        return name

    @staticmethod
    def is_socket(decl: list) -> bool:
        kind = decl[0]
        return isinstance(kind, str) and kind not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

    def wire(self, graph: dict, kind: str, depth: int) -> list:
        if kind in SOCKETS:
            return SOCKETS[kind]
        maker, index = self.makers[kind]
        name = f"make_{maker}"
        if name not in graph:
            assert depth < 4, f"no producer chain for {kind}"
            self.node(graph, maker, name, depth + 1)
        return [name, index]

    def for_node(self, class_type: str, **values) -> dict:
        graph = base_nodes()
        self.node(graph, class_type, "target")
        graph["target"]["inputs"].update(SMALL.get(class_type, {}))
        graph["target"]["inputs"].update(values)
        graph["sink"] = {"class_type": "ConduitTestSink", "inputs": {"value": ["target", 0]}}
        return graph


def outcome(client, graph: dict, timeout: float = 120.0) -> tuple[str, str, str]:
    """("refused", detail) by validation, ("ok", ""), or ("error", exception type, message)."""
    try:
        pid = client.submit(graph)
    except PromptRejected as exc:
        return "refused", "", str(exc)[:300]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hist = client.get_json(f"/history/{pid}").get(pid)
        if hist and hist.get("status", {}).get("completed") is not None:
            status = hist["status"]
            if status.get("status_str") == "success":
                return "ok", "", json.dumps(hist.get("outputs", {}))[:2000]
            for kind, data in status.get("messages", []):
                if kind == "execution_error":
                    return "error", data.get("exception_type", ""), data.get("exception_message", "")
                if kind == "execution_interrupted":
                    return "interrupted", "", ""
            return "error", "unknown", json.dumps(status)[:300]
        time.sleep(0.05)
    client.cancel(pid)
    return "timeout", "", f"no result within {timeout:.0f}s"


_canary_runs = [0]


def canary_graph() -> dict:
    """A vanilla txt2img graph. Each call's prompt has one more trailing space: the same tokens (so the same
    image) but a new input signature, so ComfyUI really runs it instead of serving its cache; the model it
    gets is the cached one that every Conduit node before received."""
    _canary_runs[0] += 1
    g = base_nodes()
    g["pos"]["inputs"]["text"] = "a red star" + " " * _canary_runs[0]
    g["ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    g["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}}
    g["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}}
    return g


def pixels(client, graph: dict) -> str:
    result = client.run(graph)
    return "".join(hashlib.sha256(Image.open(io.BytesIO(b)).convert("RGB").tobytes()).hexdigest()[:16]
                   for b in result.images)


def bad_cases(info: dict, class_type: str):
    """(label, input values, kind) for one node."""
    required = info[class_type]["input"]["required"]
    optional = info[class_type]["input"].get("optional", {})
    for name, decl in {**required, **optional}.items():
        kind = decl[0]
        if kind in ("INT", "FLOAT"):
            for v in NON_FINITE:
                yield f"{name}={v}", {name: v}, "non-finite"
        elif kind == "STRING":
            values = HOSTILE_PATHS if name == "path" else HOSTILE_STRINGS
            for v in values:
                yield f"{name}={v[:12]!r}", {name: v}, "path" if name == "path" else "string"
        elif workflow.combo_choices(decl):
            yield f"{name}=<not a choice>", {name: "no such choice"}, "choice"


def judge(kind: str, result: tuple) -> str | None:
    """What is wrong with this outcome, or None."""
    state, exc_type, message = result
    if state == "timeout":
        return "timed out"
    if state == "error" and not NAMED.match(message):
        return f"raw {exc_type}: {message[:200]}"
    if kind == "non-finite" and state == "ok":
        return "silent NaN/inf: the node ran"
    if kind == "path" and (state == "ok" or any(s in message for s in OPENED)):
        return f"path was opened: {state} {message[:200]}"
    return None


@pytest.fixture(scope="module")
def sweep_client(comfy_server):
    return comfy_server.client(timeout=180)


def conduit_nodes(info: dict) -> list[str]:
    return sorted(n for n in info if n.startswith("Conduit") and not n.startswith("ConduitTest"))


def test_every_node_refuses_bad_input_and_the_server_stays_clean(sweep_client, object_info, comfy_server):
    client = sweep_client
    builder = GraphBuilder(object_info)
    canary = pixels(client, canary_graph())
    counts, problems = Counter(), []
    fifo = comfy_server.workdir / "sweep.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    for class_type in conduit_nodes(object_info):
        cases = list(bad_cases(object_info, class_type))
        if class_type == "ConduitLoadSensitivityTable":
            cases.append(("path=<fifo>", {"path": str(fifo)}, "path"))
        for label, values, kind in cases:
            counts[class_type] += 1
            result = outcome(client, builder.for_node(class_type, **values))
            wrong = judge(kind, result)
            if wrong:
                problems.append(f"{class_type}.{label}: {wrong}")
        assert client.alive(), f"server died during {class_type}"
        if pixels(client, canary_graph()) != canary:
            problems.append(f"after {class_type}: the canary changed")
    report = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"\nsweep cases per node ({sum(counts.values())} in all): {report}")
    assert not problems, "\n".join(problems)
    without_widgets = set(conduit_nodes(object_info)) - set(counts)  # the demo loaders, Grad-SAM Masks
    assert len(conduit_nodes(object_info)) >= 20 and len(without_widgets) <= 3 and sum(counts.values()) > 300


# -- other packs' attention patches in chains ------------------------------------------------------------------

def chain_graph(pag_key: str | None, style: bool, seg: bool, core_pag: bool = False) -> dict:
    """Tiny SDXL with a hand table: Balanced Style and/or SEG, plus another pack's PAG-style extra pass."""
    g = base_nodes()
    g["ckpt"]["inputs"]["family"] = "sdxl"
    g["latent"]["inputs"].update(width=64, height=64)
    model = ["ckpt", 0]
    if style:
        g["ref"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
        g["style"] = {"class_type": "ConduitBalancedStyle", "inputs": {
            "model": model, "style_strength": 0.5, "adain_queries": True, "adain_keys": True,
            "share_attention": True, "reference_attention_scale": 1.0, "reference_attention_shift": 0.0,
            "start_percent": 0.0, "end_percent": 1.0, "noise_seed": 0, "inversion_steps": 0,
            "reference_latent": ["ref", 0], "sensitivity_table": ["table", 0]}}
        g["table"] = {"class_type": "ConduitLoadSensitivityTable",
                      "inputs": {"table": "sdxl_style_qk", "path": SWEEP_TABLE}}
        model = ["style", 0]
    if seg:
        g["seg"] = {"class_type": "ConduitSmoothedEnergyGuidance", "inputs": {
            "model": model, "scale": 3.0, "blur_sigma": -1.0, "start_percent": 0.0, "end_percent": 1.0,
            "layers": "middle", "custom_layers": "", "rescale": 0.0}}
        model = ["seg", 0]
    if core_pag:
        g["pag"] = {"class_type": "PerturbedAttentionGuidance", "inputs": {"model": model, "scale": 3.0}}
        model = ["pag", 0]
    elif pag_key:
        g["pag"] = {"class_type": "ConduitTestShortKeyPAG", "inputs": {"model": model, "scale": 3.0, "key": pag_key}}
        model = ["pag", 0]
    g["ks"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0], "seed": 1,
        "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    g["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}}
    g["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}}
    return g


SWEEP_TABLE = "sweep_tiny_sdxl.json"


@pytest.fixture(scope="module")
def sweep_table(comfy_server):
    from tests.host.cb_helpers import hand_table
    from tests.server.table_folder import first_table_folder

    import conduit_pack.patches.tables.tables_math as tm

    path = first_table_folder(comfy_server) / SWEEP_TABLE
    tm.save_table(hand_table(), path)
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.parametrize("style, seg", [(True, False), (True, True), (False, True)], ids=["bs", "bs+seg", "seg"])
def test_chains_keep_another_packs_short_key_pass(sweep_client, sweep_table, style, seg):
    client = sweep_client
    alone = pixels(client, chain_graph(None, style, seg))
    short = pixels(client, chain_graph("short", style, seg))
    full = pixels(client, chain_graph("full", style, seg))
    assert short == full  # the oracle: the same pass with the perturbation under the full key
    assert short != alone  # and the other pack's term is there at all


def test_chain_keeps_core_perturbed_attention_guidance(sweep_client, sweep_table, object_info):
    if "PerturbedAttentionGuidance" not in object_info:
        pytest.skip("the 2024 host has no PerturbedAttentionGuidance node")
    client = sweep_client
    assert pixels(client, chain_graph(None, True, True, core_pag=True)) == pixels(
        client, chain_graph("full", True, True))


# -- a hostile MLLM endpoint ------------------------------------------------------------------------------------

def plan_graph(builder: GraphBuilder, url: str, **values) -> dict:
    values = {"url": url, "api_key_env": KEY_ENV, "timeout": 3.0, "on_failure": "use manual if given",
              "manual_prompt": "a blue ball", "prompt": "a blue ball", **values}
    return builder.for_node("ConduitMLLMPlan", **values)


@pytest.mark.parametrize("behaviour", [("drip", 0.5), ("endless",), ("gzip_bomb", 64), ("echo", "{auth}"),
                                       ("echo_status", 401), ("garbled", "[" * 100000), ("announce", 10**9)],
                         ids=lambda b: b[0])
def test_hostile_endpoint_is_bounded_and_never_leaks_the_key(sweep_client, object_info, mllm_stub, behaviour,
                                                            comfy_server):
    client = sweep_client
    builder = GraphBuilder(object_info)
    for stage in ("prompt", "condition_box", "related_box"):
        mllm_stub.script(stage, behaviour)
    graph = plan_graph(builder, mllm_stub.url, prompt=f"a blue ball, {behaviour[0]}")
    t0 = time.monotonic()
    state, exc_type, message = outcome(client, graph, timeout=90)
    took = time.monotonic() - t0
    assert state in ("ok", "error") and (state == "ok" or NAMED.match(message)), (state, exc_type, message[:200])
    assert took < 3 * 3.0 * 3 + 15, f"{behaviour[0]} held the node for {took:.0f}s"
    hist = json.dumps(client.get_json("/history"))
    assert KEY not in hist and KEY not in message
    assert KEY not in comfy_server.log_path.read_text()


def test_api_key_env_must_name_a_key_variable(sweep_client, object_info, mllm_stub):
    builder = GraphBuilder(object_info)
    for bad in ("PATH", "HOME", KEY):
        state, exc_type, message = outcome(sweep_client, plan_graph(builder, mllm_stub.url, api_key_env=bad))
        assert state == "error" and NAMED.match(message), (bad, state, exc_type)
        assert KEY not in message
    assert not [r for r in mllm_stub.requests if "Authorization" in r["headers"]]


# -- interrupts in long loops -------------------------------------------------------------------------------------

def long_graphs(builder: GraphBuilder) -> dict:
    seg = chain_graph(None, False, True)
    seg["ks"]["inputs"]["steps"] = 4000
    inversion = chain_graph(None, True, False)
    inversion["style"]["inputs"]["inversion_steps"] = 200  # the most the node takes
    inversion["ref"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    analysis = builder.for_node("ConduitSensitivityAnalysis", steps=200, samples_per_group=20,
                                groups="oil painting\nwatercolor\npencil sketch")
    gradsam = builder.for_node("ConduitGradSAMKSampler", steps=5000, prompt="a red star", subject="star")
    cow = workflow.swap_loaders(workflow.load_api("cow_seed_cycle"), "sd15")
    for nid in workflow.nodes_of(cow, "ConduitCOWSeedCanvas"):
        workflow.set_input(cow, nid, "canvas_width", 64)
        workflow.set_input(cow, nid, "canvas_height", 64)
        workflow.set_input(cow, nid, "box_w", 32.0)
        workflow.set_input(cow, nid, "box_h", 32.0)
        workflow.set_input(cow, nid, "box_x", 16.0)
    workflow.set_all(cow, "BasicScheduler", steps=1000)
    workflow.set_all(cow, "ConduitCOWCycleSampler", cycles=100)
    return {"seg": seg, "balanced style inversion": inversion, "analysis": analysis, "grad-sam": gradsam,
            "cow cycles": cow}


def test_interrupt_stops_every_long_loop(sweep_client, object_info, sweep_table):
    client = sweep_client
    builder = GraphBuilder(object_info)
    canary = pixels(client, canary_graph())
    for name, graph in long_graphs(builder).items():
        pid = client.submit(graph)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and pid not in client.queue()[0]:
            time.sleep(0.1)
        time.sleep(1.5)  # well inside the loop
        t0 = time.monotonic()
        client.post_json("/interrupt", {"prompt_id": pid})
        while time.monotonic() - t0 < 30 and pid in client.queue()[0]:
            time.sleep(0.1)
        took = time.monotonic() - t0
        assert pid not in client.queue()[0], f"{name}: still running 30s after /interrupt"
        assert took < 10, f"{name}: took {took:.1f}s to stop"
        status = client.get_json(f"/history/{pid}")[pid]["status"]
        assert any(kind == "execution_interrupted" for kind, _ in status.get("messages", [])), name
    assert pixels(client, canary_graph()) == canary
    assert threading.active_count() < 50
