"""The SEG workflow on a real ComfyUI server: SEG and vanilla images come back and differ."""
import numpy as np
import pytest

from conduit import workflow
from tests.server.saved_images import saved_rgb


def small(graph, **seg_inputs):
    workflow.set_all(graph, "EmptyLatentImage", width=96, height=64, batch_size=1)
    workflow.set_all(graph, "KSampler", steps=3)
    if seg_inputs:
        workflow.set_all(graph, "ConduitSmoothedEnergyGuidance", **seg_inputs)
    return graph


def images_by_prefix(client, result) -> dict[str, np.ndarray]:
    return {name.rsplit("_", 2)[0]: img.astype(np.int16) for name, img in saved_rgb(client, result)}


def test_seg_workflow_runs_and_changes_the_image(comfy_server):
    graph = small(workflow.swap_loaders(workflow.load_api("seg_sdxl"), "sdxl"))
    client = comfy_server.client()
    imgs = images_by_prefix(client, client.run(graph))
    assert set(imgs) == {"conduit_seg", "conduit_seg_vanilla"}
    assert imgs["conduit_seg"].shape == (64, 96, 3)
    assert np.abs(imgs["conduit_seg"] - imgs["conduit_seg_vanilla"]).max() > 0


def test_seg_scale_zero_equals_vanilla_and_threshold_means_infinite(comfy_server):
    client = comfy_server.client()
    graph = small(workflow.swap_loaders(workflow.load_api("seg_sdxl"), "sdxl"), scale=0.0)
    imgs = images_by_prefix(client, client.run(graph))
    assert np.array_equal(imgs["conduit_seg"], imgs["conduit_seg_vanilla"])
    inf = images_by_prefix(client, client.run(small(workflow.swap_loaders(workflow.load_api("seg_sdxl"), "sdxl"))))
    big = images_by_prefix(client, client.run(small(workflow.swap_loaders(workflow.load_api("seg_sdxl"), "sdxl"),
                                                    blur_sigma=10000.0, custom_layers="m0", layers="custom")))
    assert np.array_equal(inf["conduit_seg"], big["conduit_seg"])


def test_seg_bad_layer_list_reports_the_node_and_token(comfy_server):
    graph = small(workflow.swap_loaders(workflow.load_api("seg_sdxl"), "sdxl"), layers="custom",
                  custom_layers="m0,z9")
    with pytest.raises(Exception, match=r"Conduit Smoothed Energy Guidance.*z9"):
        comfy_server.client().run(graph)
