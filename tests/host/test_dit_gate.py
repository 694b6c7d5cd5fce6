"""Conduit Model Layers and the ControlNet Timestep Gate on SD3/SD3.5 and Flux (tiny real DiTs and ControlNets)."""
import pytest
import torch

from tests.host.dit_helpers import CFG, conds, needs_dit, sample, slg
import conduit  # noqa: F401
from conduit_pack.toyworld import build, dit_build

import conduit_pack.nodes.conditional_balance as cbn
import conduit_pack.nodes.model_layers as mln
from conduit_pack.patches.engine.errors import ConduitError

pytestmark = needs_dit
TOPOLOGY = {"sd3": "sd3", "sd35": "sd3", "flux": "flux"}


@pytest.fixture(scope="module")
def dits():
    return {name: dit_build.build_dit(name, 0) for name in ("sd3", "flux")}


@pytest.fixture(scope="module")
def vae():
    return dit_build.build_dit_vae(2)


def image_tokens(model_patcher, name, hw):
    """Image tokens the real model attends over, read from its first block's image q/k/v projection."""
    dm = model_patcher.model.diffusion_model
    proj = dm.joint_blocks[0].x_block.attn.qkv if name == "sd3" else dm.double_blocks[0].img_attn.qkv
    seen = []
    handle = proj.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    try:
        pos, neg = conds(name)
        sample(model_patcher, pos, neg, name, hw=hw, steps=1)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("name,hw", [("sd3", (8, 12)), ("flux", (9, 13))])
def test_model_layers_lists_dit_blocks_with_the_real_token_grid(dits, name, hw):
    text = mln.ConduitModelLayers().list_layers(dits[name], hw[1] * 8, hw[0] * 8)["result"][0]
    lines = text.splitlines()
    dm = dits[name].model.diffusion_model
    if name == "sd3":
        want = [f"d{i}" for i in range(len(dm.joint_blocks))]
    else:
        want = [f"d{i}" for i in range(len(dm.double_blocks))] + [f"s{i}" for i in range(len(dm.single_blocks))]
    assert [line.split()[0] for line in lines[1:]] == want
    grid = (-(-hw[0] // 2), -(-hw[1] // 2))  # patch 2, Flux pads odd sizes
    assert grid[0] * grid[1] == image_tokens(dits[name], name, hw)
    heads, width = (2, 128) if name == "sd3" else (2, 64)
    for line in lines[1:]:
        assert f"grid {grid[0]}x{grid[1]}" in line and f"heads {heads}x{width // heads}" in line
    assert "('double_block', 0, 0)" in lines[1]
    if name == "flux":
        assert "('single_block', 1, 0)" in lines[-1]
    assert f"{grid[0] * grid[1]} image tokens" in lines[0] and "+cross" not in text


def control_net(kind, seed=1):
    from conduit_pack.toyworld.dit_controlnet import build_dit_controlnet

    return build_dit_controlnet(kind, seed)


def hint(hw=(8, 12), seed=0):
    return torch.rand(1, hw[0] * 8, hw[1] * 8, 3, generator=torch.Generator().manual_seed(seed))


def apply(pos, neg, cn, vae, end=1.0, image=None):
    import nodes

    return nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, cn, hint() if image is None else image, 0.9,
                                                            0.0, end, vae=vae)[:2]


def watch(model_patcher, cn):
    """(sigma, residuals present?) per DiT forward, and how often the control model itself ran."""
    seen, runs = [], []

    def pre(module, args, kwargs):
        control = kwargs.get("control")
        sigma = float(kwargs["transformer_options"]["sigmas"].flatten()[0])
        present = None if control is None else any(v is not None for lst in control.values() for v in lst)
        seen.append((sigma, bool(present)))

    handles = [model_patcher.model.diffusion_model.register_forward_pre_hook(pre, with_kwargs=True),
               cn.control_model.register_forward_hook(lambda *a: runs.append(1))]
    return seen, runs, handles


@pytest.mark.parametrize("kind", ["sd3", "sd35", "flux"])
@pytest.mark.parametrize("balance,invert", [(0.6, False), (0.6, True)])
def test_dit_controlnet_gated_by_noise_level(dits, vae, kind, balance, invert):
    name = TOPOLOGY[kind]
    cn = control_net(kind)
    pos, neg = apply(*conds(name), cn, vae)
    gpos, gneg = cbn.ConduitControlNetTimestepGate().gate(pos, neg, balance, False, invert)
    seen, runs, handles = watch(dits[name], cn)
    try:
        sample(dits[name], gpos, gneg, name, steps=6)
    finally:
        for h in handles:
            h.remove()
    ms = dits[name].get_model_object("model_sampling")
    gated = 0
    for sigma, present in seen:
        t = float(ms.timestep(torch.tensor([sigma]))[0])
        # the official rule on SD3's own timesteps (1000 sigma); Flux feeds sigma itself, same noise level
        rule = (t < balance * 1000) if name == "sd3" else (sigma < balance)
        off = rule != invert
        gated += off
        assert present == (not off)
    assert 0 < gated < len(seen)
    assert len(runs) == len(seen) - gated  # a gated step does not evaluate the ControlNet


def unshift(ms, sigma, lo=0.0, hi=1.0):
    """The percent whose percent_to_sigma is sigma (bisection on the model's own map)."""
    for _ in range(60):
        mid = (lo + hi) / 2
        if ms.percent_to_sigma(mid) > sigma:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_gate_equals_core_end_percent_and_chains_with_skip_layer_guidance(dits, vae, kind):
    """Oracle: gating below lambda_T is core Apply ControlNet with end_percent at sigma = lambda_T; the same
    holds on a model patched by core SkipLayerGuidanceDiT (its extra pass sees the gated ControlNet too)."""
    name = TOPOLOGY[kind]
    cn = control_net(kind)
    ms = dits[name].get_model_object("model_sampling")
    sigmas = [float(s) for s in __import__("comfy.samplers").samplers.calculate_sigmas(ms, "simple", 6)]
    balance = (sigmas[2] + sigmas[3]) / 2  # between two steps: no boundary rounding
    for model in (dits[name], slg(dits[name])):
        pos, neg = apply(*conds(name), cn, vae)
        gated = sample(model, *cbn.ConduitControlNetTimestepGate().gate(pos, neg, balance, False, False), name,
                       steps=6, cfg=CFG[name] if model is dits[name] else 3.0)
        core = sample(model, *apply(*conds(name), cn, vae, end=unshift(ms, balance)), name, steps=6,
                      cfg=CFG[name] if model is dits[name] else 3.0)
        full = sample(model, pos, neg, name, steps=6, cfg=CFG[name] if model is dits[name] else 3.0)
        assert torch.equal(gated, core)
        assert not torch.allclose(gated, full, atol=1e-4)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_zero_balance_is_bit_identical_and_input_untouched(dits, vae, kind):
    name = TOPOLOGY[kind]
    cn = control_net(kind)
    pos, neg = apply(*conds(name), cn, vae)
    before = [id(c[1]["control"]) for c in pos + neg]
    gpos, gneg = cbn.ConduitControlNetTimestepGate().gate(pos, neg, 0.0, False, False)
    assert [id(c[1]["control"]) for c in pos + neg] == before
    plain = sample(dits[name], pos, neg, name)
    assert torch.equal(sample(dits[name], gpos, gneg, name), plain)
    gated = cbn.ConduitControlNetTimestepGate().gate(pos, neg, 0.7, False, False)
    assert torch.equal(sample(dits[name], *gated, name), sample(dits[name], *gated, name))  # same seed, same image


def test_a_unet_controlnet_on_a_dit_is_refused_clearly(dits, vae):
    pos, neg = apply(*conds("sd3"), build.build_controlnet("sdxl", 1), vae, image=hint((8, 12)))
    gpos, gneg = cbn.ConduitControlNetTimestepGate().gate(pos, neg, 0.5, False, False)
    with pytest.raises(ConduitError) as err:
        sample(dits["sd3"], gpos, gneg, "sd3", steps=2)
    assert "Conduit ControlNet Timestep Gate" in str(err.value) and "ControlNet (ControlNet)" in str(err.value)
    assert "SD3/SD3.5" in str(err.value)


def test_a_flux_controlnet_on_sd3_is_refused(dits, vae):
    pos, neg = apply(*conds("sd3"), control_net("flux"), vae)
    gpos, gneg = cbn.ConduitControlNetTimestepGate().gate(pos, neg, 0.5, False, False)
    with pytest.raises(ConduitError, match="ControlNetFlux"):
        sample(dits["sd3"], gpos, gneg, "sd3", steps=2)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_sigma_to_percent_inverts_the_flow_models_own_percent_to_sigma(dits, name):
    """Progress windows (SOW, Balanced Style's percent range) read sigma_to_percent: on SD3 (shift 3) and Flux
    (t = sigma) it must be the inverse of the model's own percent_to_sigma."""
    from conduit_pack.patches.engine.steps import sigma_to_percent

    ms = dits[name].get_model_object("model_sampling")
    for percent in (0.05, 0.3, 0.5, 0.77, 0.95):
        sigma = float(ms.percent_to_sigma(percent))
        assert sigma_to_percent(ms, sigma) == pytest.approx(percent, abs=1e-6)
