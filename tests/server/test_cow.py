"""COW and SOW workflows over HTTP on a real ComfyUI: seeded canvas -> inversion -> cyclic sampler; and the
MLLM-planned SOW graph against a local stub MLLM server, with the API key kept out of everything saved."""
import io
import json
import os

import pytest
from PIL import Image

from conduit import workflow
from conduit.client import ComfyError

KEY_ENV = "CONDUIT_TEST_MLLM_KEY"
KEY = "sk-conduit-test-KEY-7f3a9"
# Set at collection time, before the session's ComfyUI starts, so the server process inherits it.
os.environ.setdefault(KEY_ENV, KEY)


def small_cow(graph, seed_node, canvas=(128, 96), box=(32.0, 0.0, 64.0, 64.0)):
    workflow.set_input(graph, seed_node, "canvas_width", canvas[0])
    workflow.set_input(graph, seed_node, "canvas_height", canvas[1])
    for name, v in zip(("box_x", "box_y", "box_w", "box_h"), box):
        workflow.set_input(graph, seed_node, name, v)
    workflow.set_all(graph, "ConduitCOWCycleSampler", cycles=2)
    return graph


def test_cow_seed_cycle_workflow_runs(comfy_server):
    graph = workflow.swap_loaders(workflow.load_api("cow_seed_cycle"), "sd15")
    small_cow(graph, workflow.nodes_of(graph, "ConduitCOWSeedCanvas")[0])
    result = comfy_server.client().run(graph)
    assert len(result.images) == 1
    assert Image.open(io.BytesIO(result.images[0])).size == (128, 96)


def sow_graph(stub_url, api_key_env=KEY_ENV):
    graph = workflow.swap_loaders(workflow.load_api("sow_mllm"), "sd15")
    plan = workflow.nodes_of(graph, "ConduitMLLMPlan")[0]
    workflow.set_input(graph, plan, "url", stub_url)
    workflow.set_input(graph, plan, "api_key_env", api_key_env)
    workflow.set_input(graph, plan, "canvas_width", 128)
    workflow.set_input(graph, plan, "canvas_height", 96)
    workflow.set_input(graph, plan, "min_side", 0.0)
    workflow.set_input(graph, plan, "max_side", 1.0)
    small_cow(graph, workflow.nodes_of(graph, "ConduitCOWSeedCanvas")[0])
    return graph, plan


def test_sow_mllm_workflow_with_stub_server_keeps_key_out(comfy_server, mllm_stub):
    graph, plan = sow_graph(mllm_stub.url)
    workflow.set_input(graph, plan, "prompt", "a blue ball on a table, run A")
    client = comfy_server.client()
    result = client.run(graph)
    assert len(result.images) == 1 and Image.open(io.BytesIO(result.images[0])).size == (128, 96)
    assert [r["stage"] for r in mllm_stub.requests] == ["prompt", "condition_box", "related_box"]
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in mllm_stub.requests)
    # the stub's prompt went into CLIPTextEncode; the report says every stage came from the model
    hist = client.get_json(f"/history/{result.prompt_id}")[result.prompt_id]
    report = json.loads(hist["outputs"][plan]["text"][0])
    assert [report[k]["source"] for k in ("prompt", "condition_box", "related_box")] == ["model"] * 3
    # the key is nowhere in what ComfyUI keeps: the submitted graph, the history, the image metadata
    assert KEY not in json.dumps(graph) and KEY not in json.dumps(hist)
    png = Image.open(io.BytesIO(result.images[0]))
    meta = json.dumps(dict(png.text))
    assert "ConduitMLLMPlan" in meta and KEY_ENV in meta and KEY not in meta


def test_sow_mllm_falls_back_to_manual_boxes_or_fails_cleanly(comfy_server, mllm_stub):
    graph, plan = sow_graph(mllm_stub.url)
    workflow.set_input(graph, plan, "prompt", "a blue ball on a table, run B")
    mllm_stub.script("condition_box", ("status", 500, "model crashed"))
    client = comfy_server.client()
    result = client.run(graph)
    report = json.loads(client.get_json(f"/history/{result.prompt_id}")[result.prompt_id]["outputs"][plan]["text"][0])
    assert report["condition_box"]["source"] == "manual" and "HTTP 500" in report["condition_box"]["notes"][0]
    assert len(result.images) == 1
    workflow.set_input(graph, plan, "prompt", "a blue ball on a table, run C")
    workflow.set_input(graph, plan, "on_failure", "error")
    mllm_stub.script("prompt", ("garbled", "<html>bad gateway</html>"))
    with pytest.raises(ComfyError, match=r"stage 1 \(prompt intensification\).*not JSON"):
        client.run(graph)
