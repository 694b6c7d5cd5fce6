"""Nodes not built for DiTs (the Grad-SAM nodes) refuse SD3/SD3.5 and Flux with an error that names the node,
the model family and what the model lacks, before anything is sampled (never a silently wrong image)."""
import pytest
import torch

from tests.host.dit_helpers import conds, needs_dit
import conduit  # noqa: F401
from conduit_pack.toyworld import build, dit_build

import conduit_pack.nodes.gradsam as gsn
import conduit_pack.patches.gradsam.gradsam_math as gm
from conduit_pack.patches.engine.errors import ConduitError

pytestmark = needs_dit
FAMILY = {"sd3": "SD3/SD3.5", "flux": "Flux"}
MASK = dict(layers="last", score="abs", kappa=0.5, threshold_over="each subject", blur_sigma=1.0, dilation=1,
            custom_layers="")
PROMPT = "a cat on a sofa"


@pytest.fixture(scope="module")
def dits():
    return {name: dit_build.build_dit(name, 0) for name in ("sd3", "flux")}


@pytest.fixture(scope="module")
def clip():
    return build.build_clip("sd15", 1)  # the tiny DiTs read its 64-wide text and pooled outputs


def refused(err, node, name, lacks):
    text = str(err.value)
    assert text.startswith(f"[{node}]") and FAMILY[name] in text and lacks in text and "Fix:" in text


def latent():
    return {"samples": torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))}


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_gradsam_nodes_refuse_dits(dits, clip, name):
    pos, neg = conds(name)
    percents = ", ".join(f"{p:.3f}" for p in gm.DEFAULT_PERCENTS)
    with pytest.raises(ConduitError) as err:
        gsn.ConduitGradSAMKSampler().sample(dits[name], pos, neg, latent(), latent(), clip, PROMPT, "cat", 0, 4, 1.0,
                                            "euler", "simple", 1.0, percents, 0, **MASK)
    refused(err, gsn.KSAMPLER_NODE, name, "cross-attention")
    with pytest.raises(ConduitError) as err:
        gsn.ConduitGradSAMMask().inspect(dits[name], pos, neg, latent(), clip, PROMPT, "cat", 0.3, 0, **MASK)
    refused(err, gsn.MASK_NODE, name, "cross-attention")


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_gradsam_sampler_refuses_a_dit_inside_samplercustom(dits, clip, name):
    from comfy_extras.nodes_custom_sampler import BasicScheduler, SamplerCustom

    percents = ", ".join(f"{p:.3f}" for p in gm.DEFAULT_PERCENTS)
    (sampler,) = gsn.ConduitGradSAMSampler().build(clip, PROMPT, "cat", latent(), "euler", percents, 7, **MASK)
    sigmas = BasicScheduler().get_sigmas(dits[name], "simple", 6, 1.0)[0]
    pos, neg = conds(name)
    with pytest.raises(ConduitError) as err:
        SamplerCustom().sample(dits[name], True, 3, 1.0, pos, neg, sampler, sigmas, latent())
    refused(err, gsn.SAMPLER_NODE, name, "cross-attention")
