"""The toy templates (conduit/toy_templates.py): one per technique workflow, committed as made, and needing no file
and no server beyond ComfyUI itself, so each runs on the embedded demo toy model as it opens."""
import json

import numpy as np
import pytest

from conduit import demo_toy, toy_templates, workflow
from conduit.workflow import MODEL_INPUTS

NAMES = sorted(toy_templates.TEMPLATES.values())


def committed(name: str) -> dict:
    return json.loads((workflow.WORKFLOW_DIR / f"{name}{workflow.API_SUFFIX}").read_text())


def test_every_unet_technique_workflow_has_a_toy_template_and_only_those():
    techniques = [n for n in workflow.short_names()
                  if not toy_templates.is_toy_template(n) and not workflow.is_dit_graph(workflow.load_api(n))]
    assert sorted(toy_templates.SOURCES) == techniques
    assert sorted(n for n in workflow.short_names() if toy_templates.is_toy_template(n)) == NAMES
    assert sorted(p.stem for p in workflow.EXAMPLES_DIR.glob("toy_*.json")) == NAMES


@pytest.mark.parametrize("source", toy_templates.SOURCES)
def test_committed_template_is_what_the_generator_makes(source):
    name = toy_templates.template_name(source)
    assert committed(name) == toy_templates.toy_template(source), \
        f"{name} is out of date: run python -m conduit toy-templates"


@pytest.mark.parametrize("name", NAMES)
def test_template_needs_no_file_and_no_other_server(name):
    graph = committed(name)
    classes = {n["class_type"] for n in graph.values()}
    assert workflow.DEMO_LOADER in classes and "CheckpointLoaderSimple" not in classes
    assert not classes & {"LoadImage", "LoadImageMask", "ControlNetLoader"}
    for node in graph.values():
        files = [k for k, v in node["inputs"].items() if isinstance(v, str) and (k in MODEL_INPUTS or k == "image")
                 and node["class_type"] != toy_templates.IMAGE_NODE]
        assert not files, (name, node)
        if node["class_type"] == "ConduitMLLMPlan":
            assert node["inputs"]["api"] == "manual"
        if node["class_type"] == "EmptyLatentImage":
            assert (node["inputs"]["width"], node["inputs"]["height"]) == (64, 64)


def test_toy_images_in_templates_are_the_demo_inputs_the_source_workflows_load():
    for source in toy_templates.SOURCES:
        loaded = sorted(n["inputs"]["image"] for n in workflow.load_api(source).values()
                        if n["class_type"] == "LoadImage")
        drawn = sorted(demo_toy.demo_inputs.DEMO_INPUTS[n["inputs"]["image"]].file
                       for n in toy_templates.toy_template(source).values()
                       if n["class_type"] == toy_templates.IMAGE_NODE)
        assert drawn == sorted(demo_toy.IMAGE_NAMES[f] for f in loaded), source


def test_the_demo_image_node_draws_the_pictures_the_demo_writes_as_files():
    import io

    from PIL import Image

    for name, item in demo_toy.demo_inputs.DEMO_INPUTS.items():
        drawn = demo_toy.demo_inputs.draw(name)
        assert drawn.dtype == np.uint8 and drawn.shape == (item.size, item.size, 3)
        assert np.array_equal(np.asarray(demo_toy.toy_image(item.file).convert("RGB")), drawn)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(demo_toy.png(item.file))).convert("RGB")), drawn)
    hint = demo_toy.demo_inputs.draw("controlnet_hint")
    assert hint.min() == 0 and hint.max() == 255 and (hint[..., 0] == hint[..., 2]).all()  # gray: white on black
    assert 0.05 < (hint > 127).mean() < 0.5  # a shape's silhouette (anti-aliased edges), not a full frame
