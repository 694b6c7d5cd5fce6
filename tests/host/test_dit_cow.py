"""COW on flow-matching models (SD3/SD3.5, Flux): x = (1 - sigma) x0 + sigma eps, on the tiny real DiTs.

Oracles: the inversion equals the reversed Euler step of the flow ODE written here on the raw network's
velocity; a cycle-free COW run equals ComfyUI's own Euler sampler from the inverted latent (also under core
SkipLayerGuidanceDiT); the exact renoise leaves the flow marginal's noise at unit std, uncorrelated with the
latent, where the VE formula would not."""
import math

import pytest
import torch

from tests.host.dit_helpers import CFG, conds, needs_dit, slg
import conduit  # noqa: F401
from conduit_pack.toyworld import dit_build

import conduit_pack.nodes.cow as cow
import conduit_pack.patches.cow.cow_math as cm
import conduit_pack.patches.cow.sampler as cs
from conduit_pack.patches.engine.errors import ConduitError

pytestmark = needs_dit
CANVAS = (128, 96)  # 16 x 12 latent, an 8 x 6 token grid


@pytest.fixture(scope="module")
def dits():
    return {name: dit_build.build_dit(name, 0) for name in ("sd3", "flux")}


def seeded(canvas=CANVAS, box=(32, 0, 64, 64)):
    img = torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(5))
    return cow.ConduitCOWSeedCanvas().make(img, canvas[0], canvas[1], *box, "pixels", "stretch", cm.GRAY)[-1]


def latents(seed_obj, gen_seed=7):
    g = torch.Generator().manual_seed(gen_seed)
    _, _, lw, lh = seed_obj.box.latent
    h, w = seed_obj.canvas_latent_mask.shape
    return ({"samples": torch.randn(1, 16, lh, lw, generator=g)}, {"samples": torch.randn(1, 16, h, w, generator=g)})


def zero_noise(model, pos, neg, sampler, sigmas, latent, cfg):
    import comfy.sample

    return comfy.sample.sample_custom(model, torch.zeros_like(latent), cfg, sampler, sigmas, pos, neg, latent,
                                      disable_pbar=True, seed=0)


def run_cow(model, name, mode="crop alone", steps=10, cycles=3, seed=42, renoise="exact", preservation=0.4,
            eta=(1.0, 0.1), observer=None, canvas=CANVAS, box=(32, 0, 64, 64), cfg=None):
    cfg = CFG[name] if cfg is None else cfg
    pos, neg = conds(name)
    sig = cs.model_sigmas(model, "simple", steps)
    seed_obj = seeded(canvas, box)
    crop, whole = latents(seed_obj)
    inv, _ = cow.ConduitCOWInvert().invert(model, pos, neg, sig, seed_obj, mode, cfg, 0.7, crop_latent=crop,
                                           canvas_latent=whole)
    (sampler,) = cow.ConduitCOWCycleSampler().build(inv, cycles, 0.7, 0.5, eta[0], eta[1], preservation, renoise,
                                                    seed)
    sampler.extra_options["cow"].observer = observer
    return zero_noise(model, pos, neg, sampler, sig, whole["samples"], cfg), inv, sig


def velocity(model_patcher, name, x, sigma, cond):
    """The raw network's output at sigma: the flow velocity v = eps - x0 (no ComfyUI sampling code)."""
    dm = model_patcher.model.diffusion_model
    ctx, extra = cond[0]
    t = torch.full((x.shape[0],), sigma * (1000.0 if name == "sd3" else 1.0))
    kwargs = {"y": extra["pooled_output"]}
    if name == "flux":
        kwargs["guidance"] = torch.full((x.shape[0],), float(extra["guidance"]))
    with torch.no_grad():
        return dm(x, t, ctx, **kwargs)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_inversion_is_the_reversed_euler_step_of_the_flow_ode(dits, name):
    m = dits[name]
    pos, neg = conds(name)
    sig = [float(s) for s in cs.model_sigmas(m, "simple", 8)]
    z = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(3))
    reached = 8 - cm.fraction_index(0.75, 8)
    path = cs.run_inversion(m, pos, neg, sig, z, 1.0, reached, flow=True)
    up = sig[::-1][: 8 - reached + 1]
    x = path[0]
    assert len(path) == len(up)
    for k, (a, b) in enumerate(zip(up[:-1], up[1:])):
        x = x + (b - a) * velocity(m, name, x, b, pos)  # network at the target level on the current latent
        assert torch.allclose(path[k + 1], x, rtol=1e-4, atol=1e-4 * float(x.abs().max())), k
    # the VE inversion (rescaled input) would be a different path
    ve = cs.run_inversion(m, pos, neg, sig, z, 1.0, reached, flow=False)
    assert not torch.allclose(ve[-1], path[-1], atol=1e-3)


@pytest.mark.parametrize("name,with_slg", [("sd3", False), ("flux", False), ("sd3", True)])
def test_cycle_free_cow_is_comfyuis_euler_from_the_inverted_latent(dits, name, with_slg):
    import comfy.samplers

    m = slg(dits[name]) if with_slg else dits[name]
    cfg = 3.0 if with_slg else CFG[name]
    out, inv, sig = run_cow(m, name, mode="in place", cycles=0, preservation=-1.0, eta=(0.0, 0.0), cfg=cfg)
    bottom = 5  # cycle_end 0.5 of 10 steps
    start = inv.levels[bottom] / (1.0 - float(sig[bottom]))  # CONST noise_scaling multiplies by (1 - sigma)
    pos, neg = conds(name)
    euler = zero_noise(m, pos, neg, comfy.samplers.ksampler("euler"), sig[bottom:],
                       m.model.process_latent_out(start), cfg)
    assert torch.allclose(out, euler, rtol=1e-4, atol=1e-4 * float(euler.abs().max()))
    if with_slg:
        plain, _, _ = run_cow(dits[name], name, mode="in place", cycles=0, preservation=-1.0, eta=(0.0, 0.0), cfg=cfg)
        assert not torch.allclose(plain, out, atol=1e-3)  # SLG's extra pass did act inside COW


def renoise_events(model, name):
    seen = []
    _, _, sig = run_cow(model, name, cycles=3, canvas=(256, 192), box=(64, 0, 128, 128),
                        observer=lambda op, x: seen.append((op, x.detach().double().clone())))
    events = [(before, after) for (p, before), (op, after) in zip(seen, seen[1:]) if op.kind == "renoise"]
    assert len(events) == 2
    return events, [float(s) for s in sig]


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_exact_renoise_keeps_the_flow_marginal(dits, name):
    """Level 5 -> level 3. The flow form: x_to = a x_from + b eps with a = (1 - s3) / (1 - s5) and
    b^2 = s3^2 - a^2 s5^2 (written here from x = (1 - s) x0 + s eps). The VE formula (a = 1) would leave the
    latent correlated with the recovered noise."""
    events, sig = renoise_events(dits[name], name)
    s_from, s_to = sig[5], sig[3]
    a = (1 - s_to) / (1 - s_from)
    b = math.sqrt(s_to ** 2 - (a * s_from) ** 2)
    for before, after in events:
        eps = (after - a * before) / b
        x = before.flatten() - before.mean()
        corr = float((x * eps.flatten()).sum() / (x.norm() * eps.flatten().norm()))
        assert abs(corr) < 0.06 and float(eps.std()) == pytest.approx(1.0, rel=0.04)
        ve = (after - before) / math.sqrt(s_to ** 2 - s_from ** 2)
        assert abs(float((x * ve.flatten()).sum() / (x.norm() * ve.flatten().norm()))) > 0.1


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_one_way_region_deterministic_and_model_untouched(dits, name):
    m = dits[name]
    before = repr(sorted(m.model_options.get("transformer_options", {}).items())), len(m.model_options)
    seen = []
    a, inv, _ = run_cow(m, name, observer=lambda op, x: seen.append((op, x.clone())))
    mask = inv.mask > 0.5
    for op, x in seen:
        if op.kind == "inject":
            assert torch.equal(x[..., mask], inv.levels[op.level][..., mask])
    b, _, _ = run_cow(m, name)
    c, _, _ = run_cow(m, name, seed=43)
    assert torch.equal(a, b) and not torch.allclose(a, c) and torch.isfinite(a).all()
    assert (repr(sorted(m.model_options.get("transformer_options", {}).items())), len(m.model_options)) == before


def test_flow_errors_name_the_node(dits, tiny_sd15):
    m = dits["sd3"]
    pos, neg = conds("sd3")
    sig = cs.model_sigmas(m, "simple", 10)
    seed_obj = seeded()
    crop, whole = latents(seed_obj)
    inv, _ = cow.ConduitCOWInvert().invert(m, pos, neg, sig, seed_obj, "crop alone", 3.0, 0.7, crop_latent=crop)
    with pytest.raises(ConduitError, match="Conduit COW Cycle Sampler.*reference-compatible.*flow"):
        cow.ConduitCOWCycleSampler().build(inv, 2, 0.7, 0.5, 1.0, 0.1, 0.4, "reference-compatible", 42)
    (sampler,) = cow.ConduitCOWCycleSampler().build(inv, 2, 0.7, 0.5, 1.0, 0.1, 0.4, "exact", 42)
    unet_latent = torch.zeros(1, 4, 12, 16)
    with pytest.raises(ConduitError, match="Conduit COW Cycle Sampler.*flow-matching model.*UNet"):
        zero_noise(tiny_sd15.model, tiny_sd15.cond(), tiny_sd15.cond(seed=1), sampler, sig, unet_latent, 3.0)
