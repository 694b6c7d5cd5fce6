"""The toy templates: each technique's workflow made to run on the embedded demo toy model as it opens.

`toy_<name>` is the graph `make demo` runs for the workflow `<name>` (conduit/demo_toy.py: the demo loader at
64x64, prompts the toy model knows, the toy ControlNet, the toy model's own style table computed in the graph),
with every Load Image replaced by Conduit Demo Toy Image, which draws the same picture, so the template needs
no file in ComfyUI's input folder, and the MLLM planner in manual mode, so it contacts no server.

`python -m conduit toy-templates` writes them (workflows/api/toy_<name>.api.json and the editor twins in
example_workflows/); a unit test keeps the committed files equal to what this module makes.
"""
from __future__ import annotations

from . import demo_toy, workflow
from .jobs import demo_graph

IMAGE_NODE = "ConduitDemoToyImage"
PREFIX = "toy_"
# The toy template of each technique workflow (every UNet workflow; the DiT ones cannot run on the SD1.5-shaped
# toy model), named by technique: the toy model is not SDXL.
TEMPLATES = {"txt2img_vanilla": "toy_txt2img", "seg_sdxl": "toy_seg", "balanced_style_sdxl": "toy_balanced_style",
             "balanced_style_controlnet_sdxl": "toy_balanced_style_controlnet",
             "sensitivity_analysis": "toy_sensitivity_analysis", "gradsam_background": "toy_gradsam",
             "cow_seed_cycle": "toy_cow", "sow_mllm": "toy_sow"}
SOURCES = tuple(TEMPLATES)
# The DiT workflows' thumbnails show the same technique on the toy model (there is no DiT demo model).
THUMBNAIL_SOURCES = {"seg_flux": "seg_sdxl", "balanced_style_sd35": "balanced_style_sdxl"}


def template_name(source: str) -> str:
    return TEMPLATES[source]


def is_toy_template(name: str) -> bool:
    return name.startswith(PREFIX)


def toy_template(source: str) -> dict:
    """The API graph of the toy template made from the workflow `source`."""
    g = demo_toy.adapt(source, demo_graph(workflow.load_api(source), "embedded"))  # a fresh copy
    for node in g.values():
        inputs = node["inputs"]
        if node["class_type"] == "LoadImage":
            name = demo_toy.demo_inputs.BY_FILE[inputs["image"]]
            node["class_type"], node["inputs"] = IMAGE_NODE, {"image": name}
            node["_meta"] = {"title": f"Demo image: {name.replace('_', ' ')}"}
        elif node["class_type"] == "ConduitMLLMPlan":
            inputs["api"] = "manual"  # the toy template contacts no MLLM: the manual boxes and prompt are the plan
        elif node["class_type"] == "SaveImage":
            inputs["filename_prefix"] = f"toy/{inputs['filename_prefix']}"  # apart from the real-model runs
    return g


def all_templates() -> dict[str, dict]:
    return {template_name(s): toy_template(s) for s in SOURCES}
