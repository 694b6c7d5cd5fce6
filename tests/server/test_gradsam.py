"""The Abs-Grad-SAM workflow on a real ComfyUI server: the image and one mask per manipulated step are saved."""
import numpy as np
import pytest

from conduit import workflow
from tests.server.saved_images import saved_rgb


def small(graph, steps=6, **sampler_inputs):
    workflow.set_all(graph, "EmptyLatentImage", width=96, height=64, batch_size=1)
    workflow.set_all(graph, "BasicScheduler", steps=steps)
    if sampler_inputs:
        workflow.set_all(graph, "ConduitGradSAMSampler", **sampler_inputs)
    return graph


def saved(client, result) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for name, img in saved_rgb(client, result):
        out.setdefault(name.split("_")[0], []).append(img)
    return out


def test_gradsam_workflow_writes_image_and_masks(comfy_server):
    graph = small(workflow.swap_loaders(workflow.load_api("gradsam_background"), "sdxl"))
    client = comfy_server.client()
    imgs = saved(client, client.run(graph))
    assert set(imgs) == {"image", "mask"}
    assert len(imgs["image"]) == 1 and imgs["image"][0].shape == (64, 96, 3)
    # 6 normal-schedule steps put the reference's three levels on distinct steps
    assert len(imgs["mask"]) == 3
    for m in imgs["mask"]:
        assert m.shape == (64, 96, 3) and set(np.unique(m).tolist()) <= {0, 255}
    assert any(0 < (m > 0).mean() < 1 for m in imgs["mask"])


def test_gradsam_workflow_without_steps_and_with_a_bad_subject(comfy_server):
    client = comfy_server.client()
    imgs = saved(client, client.run(small(workflow.swap_loaders(workflow.load_api("gradsam_background"), "sdxl"),
                                          step_percents="")))
    assert len(imgs["mask"]) == 1 and (imgs["mask"][0] == 255).all()  # nothing replaced: all subject
    graph = small(workflow.swap_loaders(workflow.load_api("gradsam_background"), "sdxl"), subject="unicorn")
    with pytest.raises(Exception, match=r"Conduit Grad-SAM Sampler.*unicorn.*deer"):
        client.run(graph)
