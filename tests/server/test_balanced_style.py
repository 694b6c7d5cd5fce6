"""Balanced style workflows (style only, and style with a gated ControlNet) on a real ComfyUI server."""
import io

import pytest
from PIL import Image

from conduit import workflow
from conduit.pack import pack_module
from tests.host.cb_helpers import hand_table

tm = pack_module("patches.tables_math")
TABLE_FILE = "sensitivity/conduit_tiny_sdxl_test_table.json"


def prepared(name, comfy_server, strength=None, hw=(64, 96)):
    """Tiny loaders, a table for the tiny model's 8 layers (the shipped SDXL one has 70), small and fast."""
    tm.save_table(hand_table(), comfy_server.output_dir / TABLE_FILE)
    graph = workflow.swap_loaders(workflow.load_api(name), "sdxl")
    graph["90"] = {"class_type": "ConduitLoadSensitivityTable",
                   "inputs": {"table": "sdxl_style_qk", "path": TABLE_FILE}}
    (style,) = workflow.nodes_of(graph, "ConduitBalancedStyle")
    workflow.set_input(graph, style, "sensitivity_table", ["90", 0])
    if strength is not None:
        workflow.set_input(graph, style, "style_strength", strength)
    workflow.set_all(graph, "KSampler", steps=3)
    workflow.set_all(graph, "EmptyLatentImage", height=hw[0], width=hw[1])
    return graph


def images(result):
    return [Image.open(io.BytesIO(data)) for data in result.images]


@pytest.mark.parametrize("name", ["balanced_style_sdxl", "balanced_style_controlnet_sdxl"])
def test_workflow_runs_and_style_changes_the_image(comfy_server, name):
    client = comfy_server.client()
    styled = images(client.run(prepared(name, comfy_server)))
    plain = images(client.run(prepared(name, comfy_server, strength=0.0)))
    assert len(styled) == 1 and len(plain) == 1  # the reference never reaches the output
    assert styled[0].size == (96, 64)
    assert styled[0].tobytes() != plain[0].tobytes()


def test_workflow_files_are_in_sync_and_use_real_loaders():
    for name in ("balanced_style_sdxl", "balanced_style_controlnet_sdxl"):
        graph = workflow.load_api(name)
        assert workflow.nodes_of(graph, "CheckpointLoaderSimple")
        assert workflow.api_path(name).with_name(f"{name}.json").exists()
    cn = workflow.load_api("balanced_style_controlnet_sdxl")
    assert workflow.nodes_of(cn, "ControlNetLoader") and workflow.nodes_of(cn, "ConduitControlNetTimestepGate")
