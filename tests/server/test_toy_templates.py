"""Every toy template runs on a real ComfyUI as the editor submits it when opened: the UI file converted to the API
graph the editor queues, on the embedded demo toy model, with no input file, no model file and no MLLM server."""
import json

import numpy as np
import pytest

from conduit import toy_templates, workflow
from tests.server.saved_images import saved_rgb

NAMES = sorted(toy_templates.TEMPLATES.values())


def as_opened(name: str, object_info: dict) -> dict:
    ui = json.loads((workflow.EXAMPLES_DIR / f"{name}.json").read_text())
    return workflow.strip_meta(workflow.api_from_ui(ui, object_info))


@pytest.mark.parametrize("name", NAMES)
def test_toy_template_runs_as_it_opens(comfy_server, object_info, name):
    client = comfy_server.client()
    images = dict(saved_rgb(client, client.run(as_opened(name, object_info))))
    assert images, f"{name} saved no image"
    generated = {n: im for n, im in images.items() if "heatmap" not in n and "sensitivity" not in n}
    if name != "toy_sensitivity_analysis":
        assert generated and all(im.shape == (64, 64, 3) for im in generated.values()), \
            {n: im.shape for n, im in images.items()}  # the toy model's own size
    if name == "toy_seg":  # the template holds SEG and vanilla side by side: they differ
        (seg,) = [im for n, im in images.items() if n.startswith("conduit_seg_0")]
        (vanilla,) = [im for n, im in images.items() if n.startswith("conduit_seg_vanilla")]
        assert np.abs(seg.astype(int) - vanilla.astype(int)).max() > 0

