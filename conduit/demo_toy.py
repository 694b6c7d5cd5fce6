"""What `make demo` changes so that every workflow runs on the demo toy model as it was trained.

The shipped workflows are written for real checkpoints (SDXL prompts, 512-1024 px, a canny ControlNet).
On the embedded toy model the demo runs each of them at the toy's own size (64x64, jobs.native_size) with:
  * prompts the toy model knows (docs/toy_world.md's captions), one per workflow, and an empty negative;
  * toy input images (a style reference, a speckled condition, a silhouette hint, a scene background)
    drawn by the toy world, instead of the generic example inputs;
  * the toy ControlNet (Conduit Demo Toy ControlNet) in place of a ControlNet checkpoint;
  * the toy model's own style table for Balanced Style, computed in the same graph by the Sensitivity
    Analysis node over five toy styles (the shipped tables are SDXL's);
  * cfg 4 on every sampler, the guidance the toy model's quality and every eval experiment are measured at
    (the workflows' 5-8 are for SDXL and over-saturate the toy model);
and each technique's output is shown next to vanilla txt2img of the same prompt, seed, size and steps, for
SEEDS consecutive seeds from the workflow's own: one seed can hide an effect the technique has on average, or
show one it rarely has, and the demo picks no seed.
"""
from __future__ import annotations

import copy
import io
from dataclasses import dataclass

from PIL import Image

from conduit_pack.toyworld import demo_inputs  # registered by importing conduit (pack.py)

from . import workflow

# The analysis groups of the toy style table: one style (colour + texture) per group, three shapes each.
TOY_STYLE_GROUPS = "\n".join(
    " | ".join(f"a {c} {t} {s} on a gray background" for s in ("circle", "square", "star"))
    for c, t in (("red", "striped"), ("blue", "dotted"), ("green", "checkered"), ("yellow", "speckled"),
                 ("purple", "solid")))
COW_BOX = demo_inputs.COW_BOX  # the toy condition is drawn at the box size the demo gives COW (condition_box)
TOY_GRADSAM_DILATION = 1  # the toy's 8x8 latent: the setting at which the eval shows Grad-SAM's effect
SEEDS = 4  # columns of every demo picture: the workflow's seed and the next three
TOY_CFG = 4.0  # eval/gen.py CFG: the guidance of the toy model's quality table and of the eval's experiments


@dataclass(frozen=True)
class ToyCase:
    prompt: str
    look_for: str
    subject: str = ""  # Grad-SAM's subject words
    own_vanilla: bool = False  # the workflow saves its own vanilla image, so the demo adds none


CASES: dict[str, ToyCase] = {
    "txt2img_vanilla": ToyCase("a red solid circle on a white background",
                               "The toy model itself: the asked-for shape, colour, texture and background."),
    "seg_sdxl": ToyCase("a blue striped square on a beige background",
                        "SEG (blurred middle-block queries, a 4x4 token grid on the toy UNet) under the workflow's own "
                        "vanilla run at the same seed: on the toy model SEG changes the image only a little (the "
                        "stripes a shade darker and crisper), and the eval finds no change in toy FD at the "
                        "defaults (docs/toy_world.md, SEG).", own_vanilla=True),
    "balanced_style_sdxl": ToyCase("a star on a white background",
                                   "The prompt names no colour or texture: vanilla draws some style, Balanced "
                                   "Style pulls it toward the reference's (blue, striped) and keeps the prompt's "
                                   "star. On the toy model the pull is partial: in the eval the subject takes the "
                                   "reference's colour in one image in four at lambda_S 0.43 (one in nine "
                                   "without the reference), and its colour moves toward the reference's in most "
                                   "(docs/toy_world.md)."),
    "balanced_style_controlnet_sdxl": ToyCase("a circle on a white background",
                                              "The reference's style on the prompt's circle, placed where the "
                                              "silhouette hint is (toy ControlNet, gated by lambda_T). On the "
                                              "toy model both pulls are weak at four seeds: in the eval the "
                                              "ControlNet raises the subject's overlap with the hint by 0.30 "
                                              "and the style reaches one image in four (docs/toy_world.md)."),
    "gradsam_background": ToyCase("a red striped triangle",
                                  "The prompt names no background: vanilla draws some scene, Grad-SAM keeps the "
                                  "reference's scene where its masks are black (white: the subject the prompt "
                                  "draws, one mask per manipulation step; mask dilation 1 for the toy's 8x8 "
                                  "latent, the default 3 is for SD/SDXL latents). On the toy model the masks "
                                  "cover most of the latent and the last steps redraw the rest, so little of the "
                                  "scene shows; the eval measures +5.4 dB background PSNR over img2img over 32 "
                                  "images (docs/toy_world.md).", subject="red striped triangle"),
    # white, not black: on a black background the toy model frays a dark-speckled shape's edge into the
    # background and adds a blot above it, which hides what COW keeps
    "cow_seed_cycle": ToyCase("a red speckled circle on a white background",
                              "The condition's own speckle pattern (no caption can name it) stays in its box "
                              "at every seed, where vanilla draws a new pattern each time; around it the "
                              "canvas's gray turns light toward the prompt's white (beige at some seeds)."),
    "sow_mllm": ToyCase("a red speckled circle on a white background",
                        "As COW, with SOW's attention modulation (no MLLM here: the manual boxes are used)."),
    "sensitivity_analysis": ToyCase("", "The toy model's own style sensitivity table over five toy styles, as "
                                        "a heatmap."),
}
IMAGE_NAMES = {"conduit_reference.png": "toy_reference.png", "conduit_condition.png": "toy_condition.png",
               "conduit_control.png": "toy_control.png", "conduit_background.png": "toy_background.png"}
assert set(IMAGE_NAMES.values()) == set(demo_inputs.BY_FILE)


def toy_image(name: str) -> Image.Image:
    """The toy model's demo inputs (by file name), drawn by the toy world as Conduit Demo Toy Image draws them."""
    return Image.fromarray(demo_inputs.draw(name))


def png(name: str) -> bytes:
    buf = io.BytesIO()
    toy_image(name).save(buf, format="PNG")
    return buf.getvalue()


def _upstream_text_nodes(graph: dict, link, seen: set | None = None) -> list[str]:
    """CLIPTextEncode nodes a conditioning link comes from (through ControlNet and gate nodes)."""
    seen = set() if seen is None else seen
    if not isinstance(link, list) or link[0] in seen or link[0] not in graph:
        return []
    seen.add(link[0])
    node = graph[link[0]]
    if node["class_type"] == "CLIPTextEncode":
        return [link[0]]
    found = []
    for key in ("positive", "negative", "conditioning"):
        if key in node["inputs"]:
            # a gate or Apply ControlNet output i follows its input of the same role
            if key in ("positive", "negative") and link[1] != ("positive", "negative").index(key):
                continue
            found += _upstream_text_nodes(graph, node["inputs"][key], seen)
    return found


def set_prompts(graph: dict, case: ToyCase) -> None:
    """Positive text encoders get the toy prompt, every other text encoder the empty prompt."""
    positives = set()
    for node in graph.values():
        if "positive" in node["inputs"]:
            positives.update(_upstream_text_nodes(graph, node["inputs"]["positive"]))
    for nid in workflow.nodes_of(graph, "CLIPTextEncode"):
        graph[nid]["inputs"]["text"] = case.prompt if nid in positives else ""
    for nid in workflow.nodes_of(graph, "ConduitGradSAMSampler"):
        # dilation 1: the node's default of 3 latent pixels is sized for SD/SDXL latents and covers most of the
        # toy's 8x8 latent, so nothing of the reference would be kept (docs/toy_world.md measures both)
        graph[nid]["inputs"].update(prompt=case.prompt, subject=case.subject, dilation=TOY_GRADSAM_DILATION)
    for nid in workflow.nodes_of(graph, "ConduitMLLMPlan"):
        graph[nid]["inputs"].update(prompt=case.prompt, manual_prompt=case.prompt)


def toy_guidance(graph: dict) -> None:
    """Every sampler (KSampler, SamplerCustom, COW's inversion) at the toy model's cfg."""
    for node in graph.values():
        value = node["inputs"].get("cfg")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node["inputs"]["cfg"] = TOY_CFG


def condition_box(graph: dict) -> None:
    """COW's box at the toy condition's own size (so its speckles are never rescaled), top left at
    (8, 16) like the eval; the SOW workflow's manual boxes follow."""
    for nid in workflow.nodes_of(graph, "ConduitCOWSeedCanvas"):
        graph[nid]["inputs"].update(box_x=8.0, box_y=16.0, box_w=float(COW_BOX), box_h=float(COW_BOX),
                                    box_units="pixels", fit="stretch")
    for nid in workflow.nodes_of(graph, "ConduitMLLMPlan"):
        box = graph[nid]["inputs"].get("manual_condition_box")
        if isinstance(box, list) and box[0] in graph:
            graph[box[0]]["inputs"].update(x=8 / 64, y=16 / 64, w=COW_BOX / 64, h=COW_BOX / 64)


def toy_table(graph: dict) -> None:
    """Balanced Style without a table gets the toy model's own, from an analysis node added to the graph."""
    targets = [nid for nid in workflow.nodes_of(graph, "ConduitBalancedStyle")
               if "sensitivity_table" not in graph[nid]["inputs"]]
    if not targets:
        return
    model = graph[targets[0]]["inputs"]["model"]
    clip = next((n["inputs"]["clip"] for n in graph.values() if n["class_type"] == "CLIPTextEncode"), None)
    nid = str(max(int(k) for k in graph if k.isdigit()) + 1)
    graph[nid] = {"class_type": "ConduitSensitivityAnalysis", "inputs": {
        "model": model, "clip": clip, "groups": TOY_STYLE_GROUPS, "content": "", "negative": "",
        "samples_per_group": 2, "steps": 12, "cfg": TOY_CFG, "sampler_name": "euler", "scheduler": "normal",
        "width": 64, "height": 64, "seed": 0, "dimension": "style", "filename_prefix": "sensitivity/toy_style",
        "images_per_group": 2}}
    for t in targets:
        graph[t]["inputs"]["sensitivity_table"] = [nid, 0]


def adapt(name: str, graph: dict) -> dict:
    """The workflow graph (already on the demo loader at the toy size) made for the toy model."""
    g = copy.deepcopy(graph)
    case = CASES.get(name)
    if case is None:
        return g
    set_prompts(g, case)
    for node in g.values():
        inputs = node["inputs"]
        if node["class_type"] == "LoadImage" and inputs.get("image") in IMAGE_NAMES:
            inputs["image"] = IMAGE_NAMES[inputs["image"]]
        if node["class_type"] == "ControlNetLoader":
            node["class_type"], node["inputs"] = "ConduitDemoToyControlNetLoader", {}
        if node["class_type"] == "ConduitSensitivityAnalysis":
            inputs.update(groups=TOY_STYLE_GROUPS, content="", negative="")
    toy_guidance(g)
    condition_box(g)
    toy_table(g)
    return g


def first_seed(graph: dict) -> int | None:
    """The workflow's own sampling seed (the first seed widget outside loaders)."""
    seeds = [n["inputs"][k] for n in graph.values() for k in workflow.SEED_NAMES
             if isinstance(n["inputs"].get(k), int) and n["class_type"] != workflow.DEMO_LOADER]
    return seeds[0] if seeds else None


def with_seed(graph: dict, seed: int) -> dict:
    """The graph at another sampling seed. The analysis node keeps its own seed, so every column uses the same
    toy style table (and the server computes it once)."""
    g = copy.deepcopy(graph)
    kept = {nid: {k: v for k, v in g[nid]["inputs"].items() if k in workflow.SEED_NAMES}
            for nid in workflow.nodes_of(g, "ConduitSensitivityAnalysis")}
    workflow.set_seeds(g, seed)
    for nid, seeds in kept.items():
        g[nid]["inputs"].update(seeds)
    return g


def vanilla_graph(name: str, graph: dict, vanilla: dict) -> dict | None:
    """Plain txt2img with the workflow's toy prompt and first seed: the side-by-side baseline."""
    case = CASES.get(name)
    if case is None or not case.prompt or name == "txt2img_vanilla" or case.own_vanilla:
        return None
    g = copy.deepcopy(vanilla)
    set_prompts(g, case)
    toy_guidance(g)
    seed = first_seed(graph)
    for nid in workflow.nodes_of(g, "KSampler"):
        if seed is not None:
            g[nid]["inputs"]["seed"] = seed
    return g


Tile = tuple[str, Image.Image]


def compare_grid(inputs: list[Tile], columns: list[list[Tile]], scale: int = 3) -> Image.Image:
    """The inputs in the first column, then one column per seed (vanilla on top, the technique's outputs
    below), tiles scaled up (nearest) with a caption strip above each."""
    from PIL import ImageDraw

    size, strip, gap = 64 * scale, 14, 4
    cells = [inputs, *columns]
    rows = max((len(c) for c in cells), default=0)
    canvas = Image.new("RGB", (len(cells) * (size + gap), rows * (size + strip)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, column in enumerate(cells):
        for j, (label, img) in enumerate(column):
            x, y = i * (size + gap), j * (size + strip)
            canvas.paste(img.convert("RGB").resize((size, size), Image.NEAREST), (x, y + strip))
            draw.text((x + 2, y + 1), label[:30], fill=(0, 0, 0))
    return canvas
