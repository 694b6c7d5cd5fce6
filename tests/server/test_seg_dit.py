"""The seg_flux workflow on a real ComfyUI server, on a tiny Flux: cfg 1 with FluxGuidance, as users run it."""
import numpy as np
import pytest

from conduit import workflow
from tests.server.saved_images import saved_rgb

PINNED_REASON = "this ComfyUI has no Flux classes or FluxGuidance (the pinned 2024 host predates SD3/Flux)"


@pytest.fixture
def flux_server(comfy_server, object_info):
    if "FluxGuidance" not in object_info or "EmptySD3LatentImage" not in object_info:
        pytest.skip(PINNED_REASON)
    return comfy_server


def small(**seg_inputs):
    graph = workflow.swap_dit_loaders(workflow.load_api("seg_flux"), "flux")
    workflow.set_all(graph, "EmptySD3LatentImage", width=80, height=48, batch_size=1)
    workflow.set_all(graph, "KSampler", steps=3)
    if seg_inputs:
        workflow.set_all(graph, "ConduitSmoothedEnergyGuidance", **seg_inputs)
    return graph


def images(client, result) -> dict[str, np.ndarray]:
    return {name.rsplit("_", 2)[0]: img.astype(np.int16) for name, img in saved_rgb(client, result)}


def test_seg_flux_workflow_guides_at_cfg_1(flux_server):
    client = flux_server.client()
    imgs = images(client, client.run(small()))
    assert set(imgs) == {"conduit_seg_flux", "conduit_seg_flux_vanilla"}
    assert imgs["conduit_seg_flux"].shape == (48, 80, 3)
    assert np.abs(imgs["conduit_seg_flux"] - imgs["conduit_seg_flux_vanilla"]).mean() > 1.0
    again = images(client, client.run(small()))
    assert np.array_equal(again["conduit_seg_flux"], imgs["conduit_seg_flux"])  # same seed, same image


def test_seg_flux_scale_zero_is_vanilla(flux_server):
    client = flux_server.client()
    imgs = images(client, client.run(small(scale=0.0)))
    assert np.array_equal(imgs["conduit_seg_flux"], imgs["conduit_seg_flux_vanilla"])


@pytest.mark.parametrize("layers, custom, says", [("middle", "", r"no self-attention layers in the 'middle'"),
                                                  ("custom", "s0,o1", r"'o1' is not understood"),
                                                  ("custom", "d9", r"'d9' names no")])
def test_seg_flux_bad_layers_name_the_node_and_the_fix(flux_server, layers, custom, says):
    with pytest.raises(Exception, match=rf"Conduit Smoothed Energy Guidance.*{says}"):
        flux_server.client().run(small(layers=layers, custom_layers=custom))
