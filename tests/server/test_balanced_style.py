"""Balanced style workflows (style only, and style with a gated ControlNet) on a real ComfyUI server."""
import io

import pytest
from PIL import Image

from conduit import workflow
import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from tests.host.cb_helpers import hand_table
from tests.server.table_folder import server_tables_fixture  # noqa: F401  (the fixture server_tables)

import conduit_pack.patches.tables.tables_math as tm
TABLE_NAME = "conduit_tests/tiny_sdxl_test_table.json"  # in the server's models/conduit_tables


def prepared(name, comfy_server, strength=None, hw=(64, 96), table_input=None):
    """Tiny loaders, a table for the tiny model's 8 layers (the shipped SDXL one has 70), small and fast.

    The table is picked by name from the conduit_tables list (table_input None), or given as another input
    dict for the loader (e.g. an old workflow's path value)."""
    graph = workflow.swap_loaders(workflow.load_api(name), "sdxl")
    graph["90"] = {"class_type": "ConduitLoadSensitivityTable",
                   "inputs": table_input or {"table": TABLE_NAME, "path": ""}}
    (style,) = workflow.nodes_of(graph, "ConduitBalancedStyle")
    workflow.set_input(graph, style, "sensitivity_table", ["90", 0])
    if strength is not None:
        workflow.set_input(graph, style, "style_strength", strength)
    workflow.set_all(graph, "KSampler", steps=3)
    workflow.set_all(graph, "EmptyLatentImage", height=hw[0], width=hw[1])
    return graph


@pytest.fixture
def tiny_table(server_tables):
    tm.save_table(hand_table(), server_tables / TABLE_NAME)
    return TABLE_NAME


def images(result):
    return [Image.open(io.BytesIO(data)) for data in result.images]


@pytest.mark.parametrize("name", ["balanced_style_sdxl", "balanced_style_controlnet_sdxl"])
def test_workflow_runs_and_style_changes_the_image(comfy_server, tiny_table, name):
    client = comfy_server.client()
    styled = images(client.run(prepared(name, comfy_server)))
    plain = images(client.run(prepared(name, comfy_server, strength=0.0)))
    assert len(styled) == 1 and len(plain) == 1  # the reference never reaches the output
    assert styled[0].size == (96, 64)
    assert styled[0].tobytes() != plain[0].tobytes()


def test_tables_are_listed_and_old_path_values_still_load(comfy_server, tiny_table):
    client = comfy_server.client()
    info = client.object_info()["ConduitLoadSensitivityTable"]["input"]
    listed = workflow.combo_choices(info["required"]["table"])
    assert tiny_table in listed and "sdxl_style_qk" in listed
    assert "path" in info["optional"]
    # an old workflow: the shipped name in `table`, the file in the old `path` input (relative to output/)
    old = {"table": "sdxl_style_qk", "path": "/old/ComfyUI/output/conduit_tests/tiny_sdxl_test_table.json"}
    by_path = images(client.run(prepared("balanced_style_sdxl", comfy_server, table_input=old)))
    by_name = images(client.run(prepared("balanced_style_sdxl", comfy_server)))
    assert by_path[0].tobytes() == by_name[0].tobytes()


@pytest.mark.parametrize("table_input, words", [
    ({"table": "sdxl_style_qk", "path": "/etc/passwd"}, ["Conduit Load Sensitivity Table", "'passwd'",
                                                         "models/conduit_tables"]),
    ({"table": "sdxl_style_qk", "path": "../../../../etc/passwd"}, ["not in the conduit_tables folders"]),
])
def test_paths_outside_the_table_folders_get_the_clear_message(comfy_server, table_input, words):
    with pytest.raises(Exception) as exc:
        comfy_server.client().run(prepared("balanced_style_sdxl", comfy_server, table_input=table_input))
    text = str(exc.value)
    assert all(w in text for w in words), text
    assert "not valid JSON" not in text


def test_literal_path_for_a_table_socket_is_not_opened(comfy_server):
    """ComfyUI passes a literal value for a custom socket straight to the node: it must not be a path."""
    graph = workflow.swap_loaders(workflow.load_api("balanced_style_sdxl"), "sdxl")
    (style,) = workflow.nodes_of(graph, "ConduitBalancedStyle")
    workflow.set_input(graph, style, "sensitivity_table", "/etc/passwd")
    workflow.set_all(graph, "KSampler", steps=1)
    with pytest.raises(Exception) as exc:
        comfy_server.client().run(graph)
    text = str(exc.value)
    assert "Conduit Balanced Style" in text and "conduit_tables" in text and "not valid JSON" not in text, text


def test_shipped_workflows_use_real_loaders():
    """The shipped graphs load real models (the tests above swap them for tiny ones). That each matches its
    UI twin is checked by test_server_basics.py::test_ui_workflow_matches_api_workflow (every *.api.json)."""
    test_only = set(workflow.TEST_LOADERS.values()) | {workflow.DEMO_LOADER}
    for name in ("balanced_style_sdxl", "balanced_style_controlnet_sdxl"):
        classes = {node["class_type"] for node in workflow.load_api(name).values()}
        assert "CheckpointLoaderSimple" in classes and not classes & test_only, (name, classes & test_only)
    cn = workflow.load_api("balanced_style_controlnet_sdxl")
    assert workflow.nodes_of(cn, "ControlNetLoader") and workflow.nodes_of(cn, "ConduitControlNetTimestepGate")
