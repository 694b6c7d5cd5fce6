"""Over HTTP on a real ComfyUI, on the tiny SD3 / Flux: the COW workflow on flow models, the ControlNet gate on
a DiT ControlNet (against core end_percent), SOW under COW on a DiT, and COW's refusal of the DDPM renoise."""
import numpy as np
import pytest

from conduit import workflow
from tests.server.saved_images import saved_rgb

PINNED_REASON = "this ComfyUI has no SD3/Flux classes (the pinned 2024 host predates them)"
CFG = {"sd3": 3.0, "flux": 1.0}


@pytest.fixture
def dit_server(comfy_server, object_info):
    if "EmptySD3LatentImage" not in object_info or "ConduitTestTinyDiT" not in object_info:
        pytest.skip(PINNED_REASON)
    return comfy_server


def cow_graph(topology, **sampler):
    graph = workflow.swap_dit_loaders(workflow.load_api("cow_seed_cycle"), topology)
    seed_node = workflow.nodes_of(graph, "ConduitCOWSeedCanvas")[0]
    for name, value in dict(canvas_width=128, canvas_height=96, box_x=32.0, box_y=0.0, box_w=64.0,
                            box_h=64.0).items():
        workflow.set_input(graph, seed_node, name, value)
    workflow.set_all(graph, "ConduitCOWCycleSampler", **{"cycles": 2, **sampler})
    workflow.set_all(graph, "ConduitCOWInvert", cfg=CFG[topology])
    workflow.set_all(graph, "SamplerCustom", cfg=CFG[topology])
    return graph


def only_image(client, result):
    (item,) = saved_rgb(client, result)
    return item[1].astype(np.int16)


@pytest.mark.parametrize("topology", ["sd3", "flux"])
def test_cow_workflow_runs_on_flow_models(dit_server, topology):
    client = dit_server.client()
    two = only_image(client, client.run(cow_graph(topology)))
    assert two.shape == (96, 128, 3)
    zero = only_image(client, client.run(cow_graph(topology, cycles=0)))
    assert np.abs(two - zero).mean() > 0.5  # the cycles act


def test_cow_reference_renoise_is_refused_and_sow_runs_on_dits(dit_server):
    client = dit_server.client()
    with pytest.raises(Exception, match=r"Conduit COW Cycle Sampler.*reference-compatible.*flow-matching"):
        client.run(cow_graph("sd3", renoise="reference-compatible"))
    cow_only = only_image(client, client.run(cow_graph("sd3")))
    graph = cow_graph("sd3")
    seed_node = workflow.nodes_of(graph, "ConduitCOWSeedCanvas")[0]
    loader = workflow.nodes_of(graph, "ConduitTestTinyDiT")[0]
    graph["90"] = {"class_type": "ConduitSOWAttention",
                   "inputs": {"model": [loader, 0], "seed": [seed_node, 4], "suppress": 2.0, "enhance": 1.0,
                              "time_decay": 1.0, "time_cutoff": 1.0, "distance_tau": 0.25, "threshold": 2.0,
                              "near_fraction": 0.2, "gate": "soft", "apply_to": "cond and uncond",
                              "phases": "cycles only", "layers": "all"}}
    workflow.set_all(graph, "SamplerCustom", model=["90", 0])
    with_sow = only_image(client, client.run(graph))
    assert with_sow.shape == cow_only.shape and np.abs(with_sow - cow_only).mean() > 0.2  # SOW acts in cycles


def gate_graph(topology, kind, balance=None, end=1.0):
    """Tiny DiT + tiny DiT ControlNet through core Apply ControlNet (with the VAE), optionally gated."""
    g = {
        "1": {"class_type": "ConduitTestTinyDiT", "inputs": {"topology": topology, "seed": 0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a house by a lake", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "conduit_condition.png"}},
        "5": {"class_type": "ConduitTestTinyDiTControlNet", "inputs": {"kind": kind, "seed": 1}},
        "6": {"class_type": "ControlNetApplyAdvanced",
              "inputs": {"positive": ["2", 0], "negative": ["3", 0], "control_net": ["5", 0], "image": ["4", 0],
                         "strength": 0.9, "start_percent": 0.0, "end_percent": end, "vae": ["1", 2]}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 96, "height": 64, "batch_size": 1}},
        "9": {"class_type": "KSampler",
              "inputs": {"model": ["1", 0], "seed": 5, "steps": 6, "cfg": CFG[topology], "sampler_name": "euler",
                         "scheduler": "simple", "positive": ["6", 0], "negative": ["6", 1], "latent_image": ["7", 0],
                         "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "conduit_dit_gate"}},
    }
    if balance is not None:
        g["8"] = {"class_type": "ConduitControlNetTimestepGate",
                  "inputs": {"positive": ["6", 0], "negative": ["6", 1], "control_balance": balance,
                             "gate_mid": False, "invert": False}}
        g["9"]["inputs"].update(positive=["8", 0], negative=["8", 1])
    return g


@pytest.mark.parametrize("topology,kind", [("sd3", "sd35"), ("flux", "flux")])
def test_gate_on_a_dit_controlnet_equals_core_end_percent(dit_server, topology, kind):
    """With 6 simple-schedule steps the gate at lambda_T between two sigmas switches the ControlNet off from
    the same step as core end_percent does at that sigma's percent (the model's own percent_to_sigma)."""
    import math

    client = dit_server.client()
    # sigma of the simple schedule: shift(t), t = 1 - i/6 (SD3 shift 3; the tiny Flux's shift 1.15 in exp form)
    if topology == "sd3":
        sig = [3 * t / (1 + 2 * t) for t in (1 - i / 6 for i in range(7))]
    else:
        sig = [math.exp(1.15) / (math.exp(1.15) + (1 / t - 1)) if t > 0 else 0.0 for t in (1 - i / 6 for i in range(7))]
    balance = (sig[2] + sig[3]) / 2
    plain = only_image(client, client.run(gate_graph(topology, kind)))
    assert np.array_equal(only_image(client, client.run(gate_graph(topology, kind, balance=0.0))), plain)
    gated = only_image(client, client.run(gate_graph(topology, kind, balance=balance)))
    # end_percent: any percent whose sigma falls between steps 2 and 3 (percent 1/3 .. 1/2 of unshifted time)
    core = only_image(client, client.run(gate_graph(topology, kind, end=0.42)))
    assert np.array_equal(gated, core)
    assert np.abs(gated - plain).mean() > 0.2
