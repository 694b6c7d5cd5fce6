"""The real editor, as a user meets the pack: every UI workflow loads with every node known and every widget
value where its input expects it, the nodes are found under conduit/... and by typing their names into the node
search, no node covers another, a toy template queued from the page runs on the demo toy model and its image and
text outputs show."""
from __future__ import annotations

import json
import time

import pytest

from conduit import workflow
from tests.editor.conftest import host_tag

UI_WORKFLOWS = sorted(workflow.EXAMPLES_DIR.glob("*.json"))


def declared_ids() -> set[str]:
    from tests.server.test_server_basics import pack_node_ids

    return pack_node_ids()


def test_every_conduit_node_is_in_the_editor_under_conduit(page):
    types = page.js("window.conduitTest.nodeTypes()")
    declared = declared_ids()
    assert len(declared) >= 20
    missing = declared - set(types)
    assert not missing, sorted(missing)
    for node_id in declared:
        assert types[node_id]["category"].startswith("conduit/"), (node_id, types[node_id])


EMPTY = {"nodes": [], "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4, "last_node_id": 0,
         "last_link_id": 0}


def press(page, key: str, text: str = "") -> None:
    """A real key press through the browser's input pipeline (keydown, keypress with text, keyup)."""
    codes = {"Enter": 13, "Escape": 27}
    named = {"key": key, "code": key, "windowsVirtualKeyCode": codes[key]} if key in codes else {"key": key}
    text = "\r" if key == "Enter" else text
    down = {"type": "keyDown", **named, **({"text": text, "unmodifiedText": text} if text else {})}
    page.send("Input.dispatchKeyEvent", down)
    page.send("Input.dispatchKeyEvent", {"type": "keyUp", **named})


def type_into_node_search(page, text: str) -> list[str]:
    """Open the node search as a user does (double-click on the empty canvas), type the text key by key, and
    return the result rows once they have settled (the search box stays open)."""
    x, y = page.js("window.conduitTest.canvasCenter()")
    for count in (1, 2):
        for kind in ("mousePressed", "mouseReleased"):
            page.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": count})
    page.wait_for("window.conduitTest.searchOpen()", timeout=20, every=0.1)
    time.sleep(0.3)
    for ch in text:
        press(page, ch, ch)
    rows, last = [], None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the search refreshes after a short debounce
        time.sleep(0.3)
        rows = page.js("window.conduitTest.searchResults()")
        if rows == last and any(text.lower() in r.lower() for r in rows):
            break
        last = rows
    return rows


def test_typing_each_node_name_into_the_node_search_finds_it_and_enter_adds_it(page, object_info):
    """What a user does: double-click the canvas, type the node's name. Every Conduit node is found by its display
    name; the current frontend also shows its category (conduit > ...). Enter puts the first result on the canvas."""
    page.js(f"window.conduitTest.load({json.dumps(EMPTY)})")
    added = []
    for node_id in sorted(declared_ids()):
        page.js(f"window.conduitTest.load({json.dumps(EMPTY)})")  # an empty canvas centre to double-click
        name = object_info[node_id]["display_name"]
        rows = type_into_node_search(page, name.split(" (")[0])  # as typed: "(demo only)" is a label, not a word
        hits = [r for r in rows if r.splitlines()[0].strip().startswith(name)]
        assert hits, (name, rows[:5])
        if "\n" in hits[0]:  # the current frontend's rows: name, category path, pack
            assert "conduit > " in hits[0], hits[0]
        if rows[0].splitlines()[0].strip() in (name, name + node_id):  # the 2024 box appends the node id
            press(page, "Enter")
            page.wait_for(f"window.conduitTest.nodeCount({json.dumps(node_id)}) == 1", timeout=20, every=0.2)
            added.append(node_id)
        else:  # another node ranks first (a longer name that starts the same): close the search instead
            press(page, "Escape")
        page.wait_for("!window.conduitTest.searchOpen()", timeout=20, every=0.2)
    page.js(f"window.conduitTest.load({json.dumps(EMPTY)})")
    # the exact name ranks first for all but names that another name extends (Conduit Grad-SAM Mask/Masks)
    assert len(added) >= len(declared_ids()) - 3, sorted(set(declared_ids()) - set(added))


def overlaps(nodes: list[dict]) -> list[tuple]:
    """Pairs of nodes whose boxes (title bar included) intersect on the canvas."""
    boxes = []
    for n in nodes:
        x, y = n["pos"]
        w, h = max(n["size"][0], n["min"][0]), max(n["size"][1], n["min"][1])
        boxes.append((n["id"], n["type"], x, y - n["title_height"], x + w, y + h))
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a[2] < b[4] and b[2] < a[4] and a[3] < b[5] and b[3] < a[5]:
                out.append((a[:2], b[:2]))
    return out


def declared_only(prompt: dict, object_info: dict) -> dict:
    """The prompt's inputs that the node declares (the 2024 editor also sends its upload button's value,
    which the server ignores)."""
    out = {}
    for nid, node in prompt.items():
        spec = object_info[node["class_type"]]["input"]
        names = set(spec.get("required", {})) | set(spec.get("optional", {}))
        out[nid] = {**node, "inputs": {k: v for k, v in node["inputs"].items() if k in names}}
    return out


@pytest.fixture(scope="module")
def object_info(editor_server):
    return editor_server.client().object_info()


def skip_unless_host_has(path, object_info: dict) -> dict:
    ui = json.loads(path.read_text())
    missing = sorted({n["type"] for n in ui["nodes"]} - set(object_info))
    if missing:
        pytest.skip(f"this ComfyUI has no {', '.join(missing)} (the pinned 2024 host predates SD3/Flux)")
    return ui


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_loads_with_known_nodes_and_its_widget_values(page, path, object_info):
    ui = skip_unless_host_has(path, object_info)
    before = len(page.exceptions)
    nodes = page.js(f"window.conduitTest.load({json.dumps(ui)})")
    assert len(nodes) == len(ui["nodes"])
    unknown = [(n["id"], n["type"]) for n in nodes if not n["known"]]
    assert not unknown, f"missing nodes in the editor: {unknown}"
    # the editor's own UI -> API conversion gives the API twin: every widget value sits on its input
    prompt = page.js("window.conduitTest.prompt()")
    twin = workflow.WORKFLOW_DIR / f"{path.stem}.api.json"
    assert declared_only(workflow.strip_meta(prompt), object_info) == workflow.strip_meta(json.loads(twin.read_text()))
    assert not page.exceptions[before:], page.exceptions[before:]  # nothing thrown while loading it


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_no_node_covers_another_and_none_hides_its_widgets(page, path, object_info):
    nodes = page.js(f"window.conduitTest.load({json.dumps(skip_unless_host_has(path, object_info))})")
    assert not overlaps(nodes), overlaps(nodes)
    small = [(n["id"], n["type"], n["size"], n["min"]) for n in nodes
             if n["size"][0] + 1 < n["min"][0] or n["size"][1] + 1 < n["min"][1]]
    assert not small, f"nodes saved smaller than their widgets need: {small}"


def test_a_workflow_queued_from_the_page_runs_on_the_demo_model_and_shows_its_outputs(page, editor_server,
                                                                                     object_info, shots):
    """The toy txt2img template as it opens (txt2img with Conduit Model Layers on the embedded demo toy model):
    queued with the editor's Queue, the image shows on Save Image and the layer report on the Model Layers node."""
    ui = json.loads((workflow.EXAMPLES_DIR / "toy_txt2img.json").read_text())
    nodes = page.js(f"window.conduitTest.load({json.dumps(ui)})")
    assert not overlaps(nodes)
    client = editor_server.client()
    before = set(client.get_json("/history"))
    assert page.js("window.conduitTest.queue()")
    new = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not new:
        done = {k: v for k, v in client.get_json("/history").items() if k not in before and v.get("outputs")}
        new = next(iter(done.values()), None)
        time.sleep(1)
    assert new, "the queued prompt did not finish; log:\n" + editor_server.log_tail(40)
    (layers_id,) = [n["id"] for n in nodes if n["type"] == "ConduitModelLayers"]
    (save_id,) = [n["id"] for n in nodes if n["type"] == "SaveImage"]
    text = page.wait_for(f"(() => {{ const n = window.conduitTest.node({layers_id}); "
                         "const w = n && n.widgets.find(([name]) => name === 'conduit_text'); return w && w[1]; })()",
                         timeout=60)
    assert "SD1.x UNet, latent 8x8" in text and "m0.0" in text  # the report of the demo model, on its node
    images = page.wait_for(f"(() => {{ const n = window.conduitTest.node({save_id}); "
                           "return n && (n.imgs.length ? n.imgs : n.images.length ? n.images : null); })()",
                           timeout=60)
    assert any("/view?" in src and "filename=" in src for src in images), images
    page.js("window.conduitTest.fit()")
    time.sleep(0.5)
    page.screenshot(shots / f"editor_demo_run_{host_tag(editor_server)}.png")


@pytest.mark.parametrize("name", ["balanced_style_sdxl", "sow_mllm"])
def test_screenshot_of_the_tall_workflows(page, editor_server, shots, name):
    """Screenshots for the record: the workflows whose tall nodes used to be covered by the node below."""
    ui = json.loads((workflow.EXAMPLES_DIR / f"{name}.json").read_text())
    nodes = page.js(f"window.conduitTest.load({json.dumps(ui)})")
    assert not overlaps(nodes)
    page.js("window.conduitTest.fit()")
    time.sleep(0.5)
    assert page.screenshot(shots / f"editor_{name}_{host_tag(editor_server)}.png").stat().st_size > 10_000


def test_the_template_browser_lists_the_editor_workflows_with_thumbnails(page, editor_server):
    """ComfyUI's template browser (current ComfyUI) gets exactly the editor workflows, not their API twins, and
    every template has a committed thumbnail that it serves."""
    listed = page.js("fetch('/api/workflow_templates').then(r => r.ok ? r.json() : null)")
    if listed is None:
        pytest.skip("this ComfyUI has no template browser route (/workflow_templates came after the 2024 host)")
    from conduit.server import PACK_FOLDER

    assert sorted(listed[PACK_FOLDER]) == sorted(p.stem for p in UI_WORKFLOWS)
    thumbs = sorted(p.stem for p in workflow.EXAMPLES_DIR.glob("*.jpg"))
    assert thumbs == sorted(p.stem for p in UI_WORKFLOWS)  # tests/unit/test_workflow_layout.py says how to fix
    for name in thumbs:
        status = page.js(f"fetch('/api/workflow_templates/{PACK_FOLDER}/{name}.jpg').then(r => r.status)")
        assert status == 200, name


def test_every_node_help_page_and_its_picture_are_served_where_the_editor_looks(page):
    """The editor fetches /extensions/<pack folder>/docs/<NodeId>.md (current ComfyUI's help panel) and renders
    images relative to it; the pack's WEB_DIRECTORY serves both, on either host."""
    from conduit.server import PACK_FOLDER

    base = f"/extensions/{PACK_FOLDER}/docs"
    for node_id in sorted(declared_ids()):
        text = page.js(f"fetch('{base}/{node_id}.md').then(r => r.ok ? r.text() : null)")
        assert text and text.splitlines()[2].startswith("# Conduit"), node_id
        for rel in [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]:
            assert page.js(f"fetch('{base}/{rel}').then(r => r.status)") == 200, (node_id, rel)
    assert page.js(f"fetch('/extensions/{PACK_FOLDER}/js/conduit_text.js').then(r => r.status)") == 200
