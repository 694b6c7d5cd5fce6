"""Workflow files: API graphs, their UI-format twins, and the edits the runner and tests make before submitting.

The UI format is what the ComfyUI editor opens; ComfyUI has no offline UI->API converter, so this module
converts both ways for the simple graphs the pack ships (no reroutes, primitives, groups or subgraphs),
using the live server's /object_info for input order.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from .errors import UsageError
from .host import REPO_ROOT

# API-format twins (the runner, the demo and the tests read them) live one level down, so ComfyUI's template
# browser, which lists every workflows/*.json and example_workflows/*.json, shows the editor workflows only.
WORKFLOW_DIR = REPO_ROOT / "workflows" / "api"
EXAMPLES_DIR = REPO_ROOT / "example_workflows"  # the editor (UI-format) twins, with a .jpg thumbnail each
PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SEED_NAMES = {"seed", "noise_seed"}

# Real loader -> (test-only tiny loader, how its inputs are filled). Outputs line up slot for slot.
TEST_LOADERS = {
    "CheckpointLoaderSimple": "ConduitTestTinyCheckpoint",
    "ControlNetLoader": "ConduitTestTinyControlNet",
}
DEMO_LOADER = "ConduitDemoToyModelLoader"

# Where the editor's missing-model prompt can fetch the files the example workflows load (properties.models of
# their loader nodes): file name -> (download URL, ComfyUI models folder). Only the publishers' own files.
MODEL_SOURCES = {
    "sd_xl_base_1.0.safetensors": (
        "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
        "checkpoints"),
    "v2-1_512-ema-pruned.safetensors": (
        "https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/v2-1_512-ema-pruned.safetensors",
        "checkpoints"),
    "controlnet-canny-sdxl-1.0.safetensors": (
        "https://huggingface.co/diffusers/controlnet-canny-sdxl-1.0/resolve/main/diffusion_pytorch_model.safetensors",
        "controlnet"),
    "flux1-dev.safetensors": (
        "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors", "diffusion_models"),
    "ae.safetensors": ("https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors", "vae"),
    "sd3.5_large.safetensors": (
        "https://huggingface.co/stabilityai/stable-diffusion-3.5-large/resolve/main/sd3.5_large.safetensors",
        "checkpoints"),
    "clip_g.safetensors": (
        "https://huggingface.co/stabilityai/stable-diffusion-3.5-large/resolve/main/text_encoders/clip_g.safetensors",
        "text_encoders"),
    "clip_l.safetensors": (
        "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors", "text_encoders"),
    "t5xxl_fp16.safetensors": (
        "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
        "text_encoders"),
}
MODEL_INPUTS = ("ckpt_name", "control_net_name", "unet_name", "vae_name", "clip_name", "clip_name1", "clip_name2",
                "clip_name3", "lora_name")


def model_properties(inputs: dict) -> list[dict]:
    """properties.models of a loader node: the files it loads that MODEL_SOURCES knows."""
    return [{"name": v, "url": MODEL_SOURCES[v][0], "directory": MODEL_SOURCES[v][1]}
            for k, v in inputs.items() if k in MODEL_INPUTS and isinstance(v, str) and v in MODEL_SOURCES]


API_SUFFIX = ".api.json"


def short_names() -> list[str]:
    """The shipped API workflows by short name: workflows/api/<name>.api.json -> <name>."""
    return sorted(p.name[: -len(API_SUFFIX)] for p in WORKFLOW_DIR.glob(f"*{API_SUFFIX}"))


def workflow_name(path: Path) -> str:
    """The name outputs are saved under: the file name without .api.json (or .json)."""
    name = path.name
    for suffix in (API_SUFFIX, ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _available() -> str:
    return "available: " + ", ".join(short_names())


def resolve_workflow(text: str) -> Path:
    """A workflow argument as the user typed it -> its file.

    Accepted: a path (with or without .api.json, relative to the current folder or to the repository), a
    shipped short name (seg_sdxl), or a unique prefix of one (seg). Anything else is a UsageError that lists
    the short names (or the candidates of an ambiguous prefix)."""
    raw = text.strip()
    if not raw:
        raise UsageError(f"no workflow given; {_available()}")
    path = Path(raw).expanduser()
    candidates = [path] if raw.endswith(".json") else [Path(raw + API_SUFFIX), path]
    if not path.is_absolute():
        candidates += [REPO_ROOT / c for c in candidates]
        if path.parts[:1] == ("workflows",) and len(path.parts) == 2:  # the layout before workflows/api/
            candidates += [WORKFLOW_DIR / c.name for c in candidates[:2]]
    for c in candidates:
        if c.is_file():
            return c
    looks_like_path = raw.endswith(".json") or "/" in raw or "\\" in raw
    if not looks_like_path:
        names = short_names()
        if raw in names:
            return WORKFLOW_DIR / f"{raw}{API_SUFFIX}"
        matches = [n for n in names if n.startswith(raw)]
        if len(matches) == 1:
            return WORKFLOW_DIR / f"{matches[0]}{API_SUFFIX}"
        if matches:
            raise UsageError(f"workflow {raw!r} is ambiguous: it could be {', '.join(matches)}; type one of them")
        raise UsageError(f"no workflow named {raw!r}; {_available()} (or give a path to an .api.json file)")
    shown = raw if raw.endswith(".json") else raw + API_SUFFIX
    raise UsageError(f"no workflow file {shown}; give the path of an existing .api.json file, or a short name "
                     f"({', '.join(short_names())})")


def api_path(name: str) -> Path:
    return resolve_workflow(name)


def load_api(name: str | Path) -> dict:
    """An API-format graph from a file or short name; a file that is not one is a UsageError saying why."""
    path = name if isinstance(name, Path) else resolve_workflow(name)
    try:
        graph = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path.name} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                         "fix the file, or re-export it from the editor with 'Export (API)'") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read workflow {path}: {exc}") from None
    if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
        twin = path.name.replace(".json", API_SUFFIX) if not path.name.endswith(API_SUFFIX) else path.name
        raise UsageError(f"{path.name} is an editor (UI-format) workflow; the runner needs the API format: use "
                         f"{twin} if it exists, or save it from the editor with 'Export (API)'")
    if not isinstance(graph, dict) or not graph or not all(
            isinstance(n, dict) and isinstance(n.get("class_type"), str) and isinstance(n.get("inputs", {}), dict)
            for n in graph.values()):
        raise UsageError(f"{path.name} is not an API-format workflow (an object of nodes, each with class_type "
                         "and inputs); save it from the editor with 'Export (API)'")
    for node in graph.values():
        node.setdefault("inputs", {})
    return graph


def nodes_of(graph: dict, class_type: str) -> list[str]:
    return [nid for nid, node in graph.items() if node["class_type"] == class_type]


def set_input(graph: dict, node_id: str, name: str, value: Any) -> None:
    if node_id not in graph:
        raise KeyError(f"no node {node_id!r} in the graph (nodes: {', '.join(sorted(graph))})")
    graph[node_id]["inputs"][name] = value


def set_all(graph: dict, class_type: str, **values: Any) -> None:
    for nid in nodes_of(graph, class_type):
        graph[nid]["inputs"].update(values)


def set_seeds(graph: dict, seed: int) -> int:
    """Set every seed-like widget (KSampler seed, SamplerCustom noise_seed, ...). Returns how many."""
    n = 0
    loaders = set(TEST_LOADERS.values()) | {DEMO_LOADER}
    for node in graph.values():
        if node["class_type"] in loaders:  # their seed picks model weights, not noise
            continue
        for key, value in node["inputs"].items():
            if key in SEED_NAMES and not isinstance(value, list):
                node["inputs"][key] = seed
                n += 1
    return n


def swap_loaders(graph: dict, family: str = "sdxl", seed: int = 0) -> dict:
    """Replace the real model loaders with the test-only tiny loaders (tests/comfy_nodes)."""
    g = copy.deepcopy(graph)
    for node in g.values():
        tiny = TEST_LOADERS.get(node["class_type"])
        if tiny:
            node["class_type"] = tiny
            node["inputs"] = {"family": family, "seed": seed if tiny.endswith("Checkpoint") else seed + 3}
    return g


# DiT graphs load the diffusion model, text encoders and VAE separately; the tiny DiT loader outputs all three.
DIT_TEST_LOADER = "ConduitTestTinyDiT"
DIT_MODEL_LOADERS = ("UNETLoader", "CheckpointLoaderSimple")
DIT_CLIP_LOADERS = ("DualCLIPLoader", "TripleCLIPLoader", "CLIPLoader")


DIT_MARKERS = {"UNETLoader", "DualCLIPLoader", "TripleCLIPLoader", "EmptySD3LatentImage", "FluxGuidance"}


def is_dit_graph(graph: dict) -> bool:
    """An SD3/Flux workflow: it loads its parts separately or makes SD3/Flux latents."""
    return any(n.get("class_type") in DIT_MARKERS for n in graph.values())


def swap_dit_loaders(graph: dict, topology: str = "flux", seed: int = 0) -> dict:
    """Replace a DiT graph's model, text-encoder and VAE loaders with the test-only tiny DiT loader, rewiring
    each link to the matching output (MODEL 0, CLIP 1, VAE 2)."""
    g = copy.deepcopy(graph)
    model_ids = [nid for nid, n in g.items() if n["class_type"] in DIT_MODEL_LOADERS]
    if not model_ids:
        raise ValueError("the graph has no diffusion-model loader to swap")
    tiny = model_ids[0]
    remap: dict[tuple[str, int], tuple[str, int]] = {}
    for nid, node in list(g.items()):
        kind = node["class_type"]
        if kind in DIT_MODEL_LOADERS:
            slots = {0: 0, 1: 1, 2: 2} if kind == "CheckpointLoaderSimple" else {0: 0}
        elif kind in DIT_CLIP_LOADERS:
            slots = {0: 1}
        elif kind == "VAELoader":
            slots = {0: 2}
        else:
            continue
        remap.update({(nid, a): (tiny, b) for a, b in slots.items()})
        if nid != tiny:
            del g[nid]
    g[tiny] = {"class_type": DIT_TEST_LOADER, "inputs": {"topology": topology, "seed": seed}}
    for node in g.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and (str(value[0]), value[1]) in remap:
                node["inputs"][name] = list(remap[(str(value[0]), value[1])])
    return g


def use_demo_model(graph: dict) -> dict:
    """Replace checkpoint loaders with the pack's embedded demo toy model (MODEL, CLIP, VAE)."""
    g = copy.deepcopy(graph)
    for node in g.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["class_type"] = DEMO_LOADER
            node["inputs"] = {}
    return g


# ---- UI format -------------------------------------------------------------------------------------------

def _input_specs(info: dict) -> list[tuple[str, Any, dict]]:
    specs = []
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append((name, kind, opts))
    order = info.get("input_order")
    if order:
        ranked = order.get("required", []) + order.get("optional", [])
        specs.sort(key=lambda s: ranked.index(s[0]) if s[0] in ranked else len(ranked))
    return specs


def combo_choices(spec: list | tuple) -> list | None:
    """The choices of a combo input as /object_info serves it: classic nodes as ([choices], {...}), V3 nodes (and
    so Conduit's on current ComfyUI) as ("COMBO", {"options": [choices], ...}); None for any other input."""
    kind = spec[0]
    if isinstance(kind, (list, tuple)):
        return list(kind)
    if kind == "COMBO":
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return list(opts.get("options") or [])
    return None


def _is_widget(kind: Any) -> bool:
    return isinstance(kind, list) or kind in PRIMITIVES or kind == "COMBO"


def _has_control(name: str, kind: Any, opts: dict) -> bool:
    return kind == "INT" and (name in SEED_NAMES or bool(opts.get("control_after_generate")))


TITLE_H, SLOT_H, WIDGET_H = 30, 20, 24  # the editor's title bar, socket row and widget row heights (px)
MULTILINE_H, PREVIEW_H = 110, 250  # a multiline text box; the image preview of nodes that upload images
COLUMN_GAP, ROW_GAP = 70, 40


def node_size(info: dict, inputs: list, widgets: list) -> tuple[int, int]:
    """A node's size from its sockets and widgets, at least what the editor computes for it, so no widget
    is hidden and a node below starts under it (the editor draws a node at its saved size)."""
    specs = _input_specs(info)
    multiline = sum(1 for _, kind, opts in specs if kind == "STRING" and opts.get("multiline"))
    upload = any(opts.get("image_upload") for _, _, opts in specs)
    sockets = max(len([1 for _, kind, _ in specs if not _is_widget(kind)]), len(info["output"]))
    rows = len(widgets) + (1 if upload else 0)
    height = 16 + SLOT_H * sockets + WIDGET_H * rows + MULTILINE_H * multiline + (PREVIEW_H if upload else 0)
    width = 420 if multiline or upload else 340
    return width, height


def place_in_columns(nodes: list[dict]) -> None:
    """Columns by graph depth, each node under the previous one with a gap: no node covers another."""
    x = 60
    for col in sorted({n["_col"] for n in nodes}):
        y = 60 + TITLE_H
        column = [n for n in nodes if n["_col"] == col]
        for n in column:
            n["pos"] = [x, y]
            y += n["size"][1] + TITLE_H + ROW_GAP
        x += max(n["size"][0] for n in column) + COLUMN_GAP
    for n in nodes:
        del n["_col"]


def ui_from_api(graph: dict, object_info: dict) -> dict:
    """A UI-format workflow (editor layout in columns by graph depth) for an API graph."""
    if all(n.isdigit() for n in graph):
        ids = {nid: int(nid) for nid in graph}
    else:
        ids = {nid: i + 1 for i, nid in enumerate(sorted(graph))}
    depth: dict[str, int] = {}

    def level(nid: str) -> int:
        if nid not in depth:
            depth[nid] = 0
            srcs = [v[0] for v in graph[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((level(s) for s in srcs), default=-1)
        return depth[nid]

    links: list[list] = []
    out_links: dict[tuple[str, int], list[int]] = {}
    nodes = []
    for nid in sorted(graph, key=lambda n: ids[n]):
        node = graph[nid]
        info = object_info[node["class_type"]]
        col = level(nid)
        inputs, widgets = [], []
        for name, kind, opts in _input_specs(info):
            value = node["inputs"].get(name, opts.get("default"))
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                link_id = len(links) + 1
                src, slot = value
                ltype = object_info[graph[src]["class_type"]]["output"][slot]
                links.append([link_id, ids[src], slot, ids[nid], len(inputs), ltype])
                out_links.setdefault((src, slot), []).append(link_id)
                entry = {"name": name, "type": "COMBO" if isinstance(kind, list) else kind, "link": link_id}
                if _is_widget(kind):
                    entry["widget"] = {"name": name}
                    widgets.append(opts.get("default"))
                inputs.append(entry)
                continue
            if _is_widget(kind):
                choices = combo_choices([kind, opts])
                if value is None and choices:
                    value = choices[0]
                widgets.append(value)
                if _has_control(name, kind, opts):
                    widgets.append("fixed")
        nodes.append({"id": ids[nid], "type": node["class_type"], "pos": [0, 0], "_col": col,
                      "size": list(node_size(info, inputs, widgets)), "flags": {}, "order": 0, "mode": 0,
                      "inputs": inputs,
                      "outputs": [], "properties": {"Node name for S&R": node["class_type"],
                                                   **({"models": models} if (models := model_properties(
                                                       node["inputs"])) else {})},
                      "widgets_values": widgets,
                      **({"title": node["_meta"]["title"]} if node.get("_meta", {}).get("title") else {})})
    for n, nid in zip(nodes, sorted(graph, key=lambda n: ids[n])):
        info = object_info[graph[nid]["class_type"]]
        names = info.get("output_name") or info["output"]
        n["outputs"] = [{"name": names[i], "type": t, "links": out_links.get((nid, i), []), "slot_index": i}
                        for i, t in enumerate(info["output"])]
    place_in_columns(nodes)
    order = sorted(nodes, key=lambda n: depth[[k for k, v in ids.items() if v == n["id"]][0]])
    for i, n in enumerate(order):
        n["order"] = i
    return {"last_node_id": max(ids.values(), default=0), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def api_from_ui(workflow: dict, object_info: dict) -> dict:
    """The API graph the editor's 'Export (API)' gives for the simple UI graphs the pack ships."""
    link_src = {l[0]: (str(l[1]), l[2]) for l in workflow["links"]}
    graph = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        info = object_info[node["type"]]
        linked = {i["name"]: link_src[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs: dict[str, Any] = {}
        for name, kind, opts in _input_specs(info):
            if _is_widget(kind):
                value = values.pop(0) if values else opts.get("default")
                if _has_control(name, kind, opts) and values:
                    values.pop(0)
                if name not in linked:
                    inputs[name] = value
            if name in linked:
                inputs[name] = [linked[name][0], linked[name][1]]
        entry = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        graph[str(node["id"])] = entry
    return graph


def strip_meta(graph: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in graph.items()}
