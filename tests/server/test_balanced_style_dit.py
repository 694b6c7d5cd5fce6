"""The balanced_style_sd35 workflow on a real ComfyUI server, on the tiny 38-block SD3.5-Large topology: the
shipped SD3.5-Large table picks the blocks, with the core SD3 loaders, ModelSamplingSD3 and KSampler a user has."""
import numpy as np
import pytest

from conduit import workflow
from tests.server.saved_images import saved_rgb

PINNED_REASON = "this ComfyUI has no SD3 classes or SD3 nodes (the pinned 2024 host predates SD3/Flux)"


@pytest.fixture
def sd3_server(comfy_server, object_info):
    if "ModelSamplingSD3" not in object_info or "EmptySD3LatentImage" not in object_info \
            or "ConduitTestTinyDiT" not in object_info:
        pytest.skip(PINNED_REASON)
    return comfy_server


def small(strength=None, bypass=False):
    graph = workflow.swap_dit_loaders(workflow.load_api("balanced_style_sd35"), "sd35l_keys")
    workflow.set_all(graph, "EmptySD3LatentImage", width=80, height=48, batch_size=1)
    workflow.set_all(graph, "KSampler", steps=3)
    (style,) = workflow.nodes_of(graph, "ConduitBalancedStyle")
    if strength is not None:
        workflow.set_input(graph, style, "style_strength", strength)
    if bypass:  # the same graph without the style node: the sampler takes ModelSamplingSD3's model
        (sampler,) = workflow.nodes_of(graph, "KSampler")
        workflow.set_input(graph, sampler, "model", graph[style]["inputs"]["model"])
        del graph[style]
    return graph


def image(client, graph) -> np.ndarray:
    (only,) = saved_rgb(client, client.run(graph))
    return only[1].astype(np.int16)


def test_balanced_style_sd35_workflow_runs_and_styles(sd3_server):
    client = sd3_server.client()
    styled = image(client, small())
    assert styled.shape == (48, 80, 3)  # one image: the reference never reaches the output
    vanilla = image(client, small(bypass=True))
    assert np.abs(styled - vanilla).mean() > 1.0
    assert np.array_equal(image(client, small()), styled)  # same seed, same image


def test_balanced_style_sd35_strength_zero_is_vanilla(sd3_server):
    client = sd3_server.client()
    assert np.array_equal(image(client, small(strength=0.0)), image(client, small(bypass=True)))


def test_balanced_style_sd35_bad_shift_names_the_node(sd3_server):
    graph = small()
    workflow.set_all(graph, "ConduitBalancedStyle", reference_attention_shift=0.5)
    with pytest.raises(Exception, match=r"Conduit Balanced Style.*reference_attention_shift"):
        sd3_server.client().run(graph)
