"""The pack loads in a real ComfyUI, every Conduit node is registered, and a graph runs over HTTP."""
import io
import json

import pytest
from PIL import Image

from conduit import workflow
from conduit.host import REPO_ROOT


def pack_node_ids() -> set[str]:
    """Node ids declared in nodes/*.py (classes under @conduit_node), read as text so this tier does not import
    ComfyUI in-process."""
    import re

    ids = set()
    for path in (REPO_ROOT / "nodes").glob("*.py"):
        text = path.read_text()
        ids |= set(re.findall(r"^@conduit_node\(.*?\)\nclass (Conduit\w+)", text, re.M))
    return ids


def test_every_conduit_node_is_registered(object_info):
    declared = pack_node_ids()
    assert {"ConduitModelLayers", "ConduitBalancedStyle", "ConduitMLLMPlan"} <= declared
    assert len(declared) >= 20
    missing = declared - set(object_info)
    assert not missing, f"not registered by the server (import failed?): {sorted(missing)}"
    for nid in declared:
        info = object_info[nid]
        assert info["category"].startswith("conduit/"), nid
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                assert opts.get("tooltip"), f"{nid}.{name} has no tooltip"


def test_vanilla_graph_runs_and_returns_images(comfy_server):
    graph = workflow.swap_loaders(workflow.load_api("txt2img_vanilla"), "sdxl")
    workflow.set_all(graph, "EmptyLatentImage", width=256, height=192, batch_size=2)
    workflow.set_all(graph, "KSampler", steps=3)
    workflow.set_all(graph, "ConduitModelLayers", width=256, height=192)
    client = comfy_server.client()
    result = client.run(graph)
    assert len(result.images) == 2
    for data in result.images:
        img = Image.open(io.BytesIO(data))
        assert img.size == (256, 192)
    text = result.outputs["10"]["text"][0]
    assert "m0.0" in text and "grid 6x8" in text


def raw_prompt(url, graph):
    """(HTTP status, JSON reply) of POST /prompt, read without the pack's client."""
    from urllib import error, request

    req = request.Request(url + "/prompt", data=json.dumps({"prompt": graph}).encode(),
                          headers={"Content-Type": "application/json"})
    try:
        with request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_bad_graph_reports_the_node_error(comfy_server):
    """A sampler name that does not exist: the server rejects the graph naming that node, its class and the
    input, and the pack's client raises with the same three (and the bad value) in its message."""
    import re

    from conduit.client import ComfyError

    graph = workflow.swap_loaders(workflow.load_api("txt2img_vanilla"), "sdxl")
    workflow.set_all(graph, "KSampler", sampler_name="no_such_sampler")
    (ks,) = workflow.nodes_of(graph, "KSampler")
    (layers,) = workflow.nodes_of(graph, "ConduitModelLayers")
    only_image = {k: v for k, v in graph.items() if k != layers}  # no valid output left: nothing is queued
    status, reply = raw_prompt(comfy_server.url, only_image)
    assert status == 400, reply
    assert reply["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(reply["node_errors"]) == {ks}
    entry = reply["node_errors"][ks]
    assert entry["class_type"] == "KSampler"
    (err,) = entry["errors"]
    assert err["type"] == "value_not_in_list"
    assert err["extra_info"]["input_name"] == "sampler_name"
    assert err["extra_info"]["received_value"] == "no_such_sampler"

    client = comfy_server.client()
    for g in (only_image, graph):  # wholly rejected (HTTP 400), and partly valid (the layer report is fine)
        with pytest.raises(ComfyError) as info:
            client.run(g)
        msg = str(info.value)
        assert re.search(rf'\bnode {ks}\b|"{ks}":', msg), msg
        for part in ("KSampler", "sampler_name", "no_such_sampler"):
            assert part in msg, (part, msg)


@pytest.mark.parametrize("path", sorted(workflow.WORKFLOW_DIR.glob("*.api.json")), ids=lambda p: p.name)
def test_ui_workflow_matches_api_workflow(path, object_info):
    """Every shipped UI workflow converts to its API twin (same nodes, links and widget values)."""
    ui_path = workflow.EXAMPLES_DIR / path.name.replace(".api.json", ".json")
    assert ui_path.exists(), f"missing UI-format twin {ui_path.name}; run: python -m conduit ui {path.name}"
    api = workflow.strip_meta(json.loads(path.read_text()))
    missing = sorted({n["class_type"] for n in api.values()} - set(object_info))
    if missing:
        pytest.skip(f"this ComfyUI has no {', '.join(missing)} (the pinned 2024 host predates SD3/Flux)")
    converted = workflow.strip_meta(workflow.api_from_ui(json.loads(ui_path.read_text()), object_info))
    assert converted == api


def test_the_server_registered_the_api_its_host_has(comfy_server, object_info):
    """Current ComfyUI registers Conduit's V3 nodes (comfy_entrypoint): their combos are served in V3's
    ("COMBO", {"options": [...]}) form. The 2024 host registers the classic mappings (combos as lists). Either
    way the widgets (names, order, defaults) are those of the declaration, which saved workflows rely on."""
    host_has_v3 = (comfy_server.host.path / "comfy_api" / "latest" / "__init__.py").is_file()
    layers = object_info["ConduitSmoothedEnergyGuidance"]["input"]["required"]["layers"]
    if host_has_v3:
        assert layers[0] == "COMBO" and "middle" in layers[1]["options"], layers
    else:
        assert isinstance(layers[0], list) and "middle" in layers[0], layers
    assert layers[1]["default"] in workflow.combo_choices(layers)
