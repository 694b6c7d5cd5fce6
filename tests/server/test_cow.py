"""COW and SOW workflows over HTTP on a real ComfyUI: seeded canvas -> inversion -> cyclic sampler; and the
MLLM-planned SOW graph against a local stub MLLM server, with the API key kept out of everything saved."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conduit import demo_toy, workflow
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


TOY_BOX = (8, 8, 48, 48)  # x, y, w, h on the toy model's 64 x 64 canvas
# Unlike the condition (a blue disc on gray), on a background brighter than the disc as the condition's gray is:
# identity is measured by luminance, and a black background would turn the disc's surround darker than the disc
# and the correlation negative wherever COW grows the prompt's background inside the box.
TOY_PROMPT = "a yellow striped square on a white background"
CONDITION_FILE = "conduit_test_cow_condition.png"


def off_centre_condition():
    """A blue disc on gray, off centre (so a mirrored or shifted paste shows): 256 x 256 RGB."""
    img = Image.new("RGB", (256, 256), (128, 128, 128))
    ImageDraw.Draw(img).ellipse((40, 60, 150, 170), fill=(40, 80, 220))
    return img


def toy_cow_graph(condition_file=CONDITION_FILE):
    """The shipped COW graph on the demo toy model (trained VAE and UNet, 64 x 64), a prompt unlike the
    condition, condition pasted at TOY_BOX."""
    graph = workflow.use_demo_model(workflow.load_api("cow_seed_cycle"))
    small_cow(graph, workflow.nodes_of(graph, "ConduitCOWSeedCanvas")[0], canvas=(64, 64),
              box=tuple(float(v) for v in TOY_BOX))
    workflow.set_all(graph, "ConduitCOWCycleSampler", cycles=10)
    workflow.set_all(graph, "LoadImage", image=condition_file)
    sampler = workflow.nodes_of(graph, "SamplerCustom")[0]
    positive = graph[sampler]["inputs"]["positive"][0]
    workflow.set_input(graph, positive, "text", TOY_PROMPT)
    demo_toy.toy_guidance(graph)  # sampler and inversion at the toy model's cfg 4 (the workflow's 7.5 is SD's)
    return graph, sampler


def vanilla_twin(graph, sampler):
    """The same graph as plain txt2img: same model, prompts, sigmas, sampler seed and CFG, but an empty latent,
    added noise and a core sampler instead of the COW inversion and cycles."""
    g = {k: v for k, v in graph.items() if v["class_type"] not in (
        "ConduitCOWSeedCanvas", "ConduitCOWInvert", "ConduitCOWCycleSampler", "VAEEncode", "LoadImage")}
    g["90"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    g["91"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}}
    inputs = g[sampler]["inputs"]
    inputs.update(add_noise=True, latent_image=["90", 0], sampler=["91", 0])
    return g


def box_pixels(png):
    x, y, w, h = TOY_BOX
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)[y:y + h, x:x + w]


def luminance(rgb):
    return rgb @ np.array([0.299, 0.587, 0.114])


def carried(png, condition):
    """Pearson correlation of the box's luminance with the condition's (eval_cow's identity measure)."""
    return float(np.corrcoef(luminance(box_pixels(png)).ravel(), luminance(condition).ravel())[0, 1])


def test_cow_seed_cycle_output_carries_the_condition(comfy_server):
    """COW's promise: the pasted condition survives into the output although the prompt asks for something
    else. The condition (an off-centre blue disc on gray, resized to the box here with PIL) is compared with
    the box of the COW image and of the same graph run as plain txt2img at the same seed, by luminance
    correlation: COW keeps where the disc is, plain txt2img does not. (The toy model redraws the colour the
    prompt names, yellow, over the disc, so the disc's blue itself is not what survives; eval_cow measures
    identity by luminance too.)"""
    x, y, w, h = TOY_BOX
    off_centre_condition().save(comfy_server.workdir / "input" / CONDITION_FILE)
    condition = np.asarray(off_centre_condition().resize((w, h), Image.BILINEAR), dtype=np.float64)
    graph, sampler = toy_cow_graph()
    client = comfy_server.client()
    (cow_png,) = client.run(graph).images
    (plain_png,) = client.run(vanilla_twin(graph, sampler)).images
    assert Image.open(io.BytesIO(cow_png)).size == (64, 64)
    cow_r, plain_r = carried(cow_png, condition), carried(plain_png, condition)
    # measured at seeds 0-3: COW 0.59-0.61, plain txt2img 0.01-0.28
    assert cow_r > 0.3 and cow_r > plain_r + 0.25, (cow_r, plain_r)


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
