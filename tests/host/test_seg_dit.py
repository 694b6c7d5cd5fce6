"""SEG on tiny SD3 (MMDiT) and Flux models from ComfyUI's own classes, on its real sampler.

The oracle is written here independently of Conduit's joint-attention engine: its own block replace puts its
own attention override in the options, finds the image tokens after the prompt's tokens, blurs them with a
dense 2-D Gaussian convolution on the image grid and runs ComfyUI's attention on the result.
"""
import math

import pytest
import torch

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack)

from conduit_pack.toyworld import dit_build
from tests.host.test_seg import oracle_blur_grid

OK, WHY = dit_build.dit_available()
pytestmark = pytest.mark.skipif(not OK, reason=f"DiT tests need SD3/Flux classes: {WHY}")

if OK:
    import conduit_pack.nodes.seg as node_mod
    import conduit_pack.patches.engine.errors as errors
    import conduit_pack.patches.engine.host as host
    import conduit_pack.patches.seg.dit_blur as dit_blur
    import conduit_pack.patches.seg.guidance as seg
    from conduit_pack.patches.engine.dit_attention import JointCall

TOKENS = 8  # prompt tokens of dit_conditioning


@pytest.fixture(scope="module")
def flux():
    return dit_build.build_dit("flux", seed=0)


@pytest.fixture(scope="module")
def sd3():
    return dit_build.build_dit("sd3", seed=1)


def run(model, name, latent_hw=(12, 20), steps=3, cfg=None, seed=0, batch=1):
    import comfy.sample

    cfg = (1.0 if name == "flux" else 4.0) if cfg is None else cfg
    pos = dit_build.dit_conditioning(name, batch, seed=10, tokens=TOKENS)
    neg = dit_build.dit_conditioning(name, batch, seed=11, tokens=TOKENS)
    latent = torch.zeros(batch, dit_build.LATENT_CHANNELS, *latent_hw)
    return comfy.sample.sample(model, testing.noise_for(tuple(latent.shape), seed), steps, cfg, "euler", "simple",
                               pos, neg, latent, seed=seed, disable_pbar=True)


# -- the oracle ------------------------------------------------------------------------------------------
def oracle_override(grid_hw, sigma):
    def override(func, *args, **kwargs):
        kwargs = dict(kwargs)
        q, k, v = args[:3]
        heads = args[3] if len(args) > 3 else kwargs.pop("heads")
        rest = args[4:]
        skip = kwargs.get("skip_reshape", False)
        qh = q if skip else q.reshape(q.shape[0], q.shape[1], heads, -1).transpose(1, 2)  # b, h, n, d
        h, w = grid_hw
        img = qh[:, :, TOKENS:TOKENS + h * w]  # prompt tokens come first in both families
        b, nh, n, d = img.shape
        grid = img.permute(0, 1, 3, 2).reshape(b, nh * d, h, w)
        blurred = oracle_blur_grid(grid, sigma).reshape(b, nh, d, n).permute(0, 1, 3, 2)
        qb = torch.cat([qh[:, :, :TOKENS], blurred, qh[:, :, TOKENS + h * w:]], dim=2)
        qb = qb if skip else qb.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)
        return func(qb, k, v, heads, *rest, **kwargs)
    return override


def oracle_blurred_pass(args, keys, sigma, grid_hw):
    def block(args_, extra):
        opts = dict(args_["transformer_options"], optimized_attention_override=oracle_override(grid_hw, sigma))
        return extra["original_block"]({**args_, "transformer_options": opts})

    opts = args["model_options"]
    for key in keys:
        opts = host.options_with_replace(opts, block, "dit", key)
    return host.calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"], opts)[0]


class Recorder:
    def __init__(self, keys, sigma, grid_hw):
        self.keys, self.sigma, self.grid = keys, sigma, grid_hw
        self.steps = []

    def __deepcopy__(self, memo):
        return self

    def before(self, args):
        self.steps.append({k: args[k] for k in ("denoised", "cond_denoised")})
        return args["denoised"]

    def after(self, args):
        self.steps[-1]["seg"] = args["denoised"]
        self.steps[-1]["blurred"] = oracle_blurred_pass(args, self.keys, self.sigma, self.grid)
        return args["denoised"]


def guided_between(base, settings, keys, sigma, grid_hw):
    rec = Recorder(keys, sigma, grid_hw)
    m = base.clone()
    m.set_model_sampler_post_cfg_function(rec.before)
    m = seg.apply_seg(m, settings)
    m.set_model_sampler_post_cfg_function(rec.after)
    return m, rec


# -- the blur itself ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [1.5, 3.0, -1.0])
def test_blur_touches_the_image_tokens_only_and_is_a_dense_2d_gaussian(sigma):
    gen = torch.Generator().manual_seed(0)
    text, grid, refs = 5, (3, 7), 4  # a non-square grid, with reference-latent tokens after the image
    q = torch.randn(2, 3, text + grid[0] * grid[1] + refs, 8, generator=gen, dtype=torch.float64)
    call = JointCall(q, q, q, ("double_block", 0), text, grid, {}, lambda *a: None)
    out = dit_blur.blurred_image_queries(call, sigma)
    assert torch.equal(out[:, :, :text], q[:, :, :text])
    assert torch.equal(out[:, :, text + 21:], q[:, :, text + 21:])
    img = q[:, :, text:text + 21].permute(0, 1, 3, 2).reshape(2, 24, *grid)
    want = oracle_blur_grid(img, sigma).reshape(2, 3, 8, 21).permute(0, 1, 3, 2)
    assert torch.allclose(out[:, :, text:text + 21], want, atol=1e-12)
    assert not torch.allclose(out[:, :, text:text + 21], q[:, :, text:text + 21])


# -- guidance on the real sampler against the oracle ------------------------------------------------------
@pytest.mark.parametrize("name, layers, keys", [
    ("flux", "auto", [("single_block", 0)]),
    ("flux", "double", [("double_block", 0), ("double_block", 1)]),
    ("sd3", "custom:d1,d3", [("double_block", 1), ("double_block", 3)]),
    ("sd3", "auto", [("double_block", 2)]),  # no block 7-9 in a 4-block model: the middle block
])
@pytest.mark.parametrize("latent_hw", [(12, 20), (11, 18)])  # grids 6x10 and 6x9 (odd side: padded patch)
def test_guidance_equals_the_oracle(request, name, layers, keys, latent_hw):
    base = request.getfixturevalue(name)
    preset, _, custom = layers.partition(":")
    sigma = 2.0
    grid = (-(-latent_hw[0] // 2), -(-latent_hw[1] // 2))
    settings = seg.SegSettings(scale=3.0, sigma=sigma, layers=preset, custom_layers=custom)
    m, rec = guided_between(base, settings, keys, sigma, grid)
    run(m, name, latent_hw)
    assert len(rec.steps) == 3
    for st in rec.steps:
        want = st["denoised"] + 3.0 * (st["cond_denoised"] - st["blurred"])
        assert torch.allclose(st["seg"], want, atol=2e-5, rtol=1e-5)
        assert (st["seg"] - st["denoised"]).abs().max() > 1e-3


def test_flux_at_cfg_1_with_flux_guidance_runs_no_uncond(flux):
    """Guidance-distilled Flux runs at cfg 1: one cond pass + SEG's pass per step, and SEG still guides."""
    calls = []

    def count(apply_model, args):
        calls.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    m = seg.apply_seg(flux, seg.SegSettings(scale=3.0, sigma=-1.0))
    m.set_model_unet_function_wrapper(count)
    out = run(m, "flux", steps=2)
    assert calls == [1, 1, 1, 1]
    assert not torch.equal(out, run(flux, "flux", steps=2))


def test_scale_zero_is_bit_identical_and_the_input_model_is_unchanged(flux, sd3):
    for base, name in ((flux, "flux"), (sd3, "sd3")):
        before = repr(base.model_options)
        vanilla = run(base, name)
        assert torch.equal(run(seg.apply_seg(base, seg.SegSettings(scale=0.0)), name), vanilla)
        guided = seg.apply_seg(base, seg.SegSettings(scale=3.0, sigma=-1.0))
        a, b = run(guided, name), run(guided, name)
        assert torch.equal(a, b) and not torch.equal(a, vanilla)
        assert repr(base.model_options) == before
        assert torch.equal(run(base, name), vanilla)


def test_outside_the_percent_window_no_extra_pass_runs(sd3):
    m = seg.apply_seg(sd3, seg.SegSettings(scale=3.0, sigma=-1.0, start_percent=0.99, end_percent=1.0))
    assert torch.equal(run(m, "sd3", steps=2), run(sd3, "sd3", steps=2))


def test_batch_of_two_guides_each_image_as_alone(flux):
    import comfy.sample

    m = seg.apply_seg(flux, seg.SegSettings(scale=3.0, sigma=2.0))
    noise = testing.noise_for((1, dit_build.LATENT_CHANNELS, 12, 20), 5)
    (ctx, extra), = dit_build.dit_conditioning("flux", 1, seed=10, tokens=TOKENS)
    neg = dit_build.dit_conditioning("flux", 1, seed=11, tokens=TOKENS)

    def go(noise_, batch):
        return comfy.sample.sample(m, noise_, 2, 1.0, "euler", "simple", [[ctx, extra]], neg,
                                   torch.zeros_like(noise_), seed=0, disable_pbar=True)

    one = go(noise, 1)
    other = testing.noise_for(tuple(noise.shape), 6)
    pair = go(torch.cat([noise, other]), 2)
    assert torch.allclose(pair[:1], one, atol=1e-4)
    assert torch.allclose(pair[1:], go(other, 1), atol=1e-4)


# -- composition with core SkipLayerGuidanceDiT -----------------------------------------------------------
def slg(model, layers="0", scale=3.0):
    import comfy_extras.nodes_slg as nodes_slg

    out = nodes_slg.SkipLayerGuidanceDiT.execute(model=model, scale=scale, double_layers=layers, single_layers="",
                                                 start_percent=0.0, end_percent=1.0, rescaling_scale=0.0)
    return out.args[0]


@pytest.mark.parametrize("order", ["slg_first", "seg_first"])
def test_seg_chains_with_core_skip_layer_guidance(sd3, order):
    settings = seg.SegSettings(scale=3.0, sigma=2.0, layers="custom", custom_layers="d1")
    grid = (6, 10)
    if order == "slg_first":
        m, rec = guided_between(slg(sd3, "2"), settings, [("double_block", 1)], 2.0, grid)
        only_slg = slg(sd3, "2")
    else:
        m, rec = guided_between(sd3, settings, [("double_block", 1)], 2.0, grid)
        m = slg(m, "2")
        only_slg = slg(sd3, "2")
    out = run(m, "sd3", cfg=4.0)
    for st in rec.steps:  # SEG's term is exact whichever side SLG sits on
        want = st["denoised"] + 3.0 * (st["cond_denoised"] - st["blurred"])
        assert torch.allclose(st["seg"], want, atol=2e-5, rtol=1e-5)
    assert not torch.equal(out, run(only_slg, "sd3", cfg=4.0))
    assert not torch.equal(out, run(seg.apply_seg(sd3, settings), "sd3", cfg=4.0))


@pytest.mark.parametrize("share_prefix", [True, False])
def test_another_packs_attention_override_still_runs_inside_seg(flux, share_prefix):
    """An override another pack put in the model options keeps running, on the blurred rows too, and every
    call's cond_or_uncond describes its rows (the prefix fork widens it with the batch)."""
    seen = []

    def foreign(func, *args, **kwargs):
        seen.append((args[0].shape[0], len(kwargs["transformer_options"]["cond_or_uncond"])))
        return func(*args, **kwargs)

    base = flux.clone()
    base.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = foreign
    run(seg.apply_seg(base, seg.SegSettings(scale=3.0, sigma=2.0, share_prefix=share_prefix)), "flux", steps=1)
    with_seg = list(seen)
    seen.clear()
    run(base, "flux", steps=1)
    assert all(rows == cou for rows, cou in with_seg)
    # blurred single blocks (s0 and what follows it) once more per cond row; with the fork the double blocks
    # before s0 run once
    extra = sum(r for r, _ in with_seg) - sum(r for r, _ in seen)
    assert extra == (2 if share_prefix else 4)


def test_the_prefix_fork_gives_the_separate_pass_result(sd3):
    for layers in ("custom:d2-3", "all"):
        preset, _, custom = layers.partition(":")
        shared = seg.apply_seg(sd3, seg.SegSettings(scale=3.0, sigma=2.0, layers=preset, custom_layers=custom))
        alone = seg.apply_seg(sd3, seg.SegSettings(scale=3.0, sigma=2.0, layers=preset, custom_layers=custom,
                                                   share_prefix=False))
        assert torch.allclose(run(shared, "sd3"), run(alone, "sd3"), atol=1e-4)


# -- errors ------------------------------------------------------------------------------------------------
def test_unet_layer_names_on_a_dit_get_a_clear_error(flux):
    node = node_mod.ConduitSmoothedEnergyGuidance()
    with pytest.raises(errors.ConduitError, match=r"\[Conduit Smoothed Energy Guidance\].*'middle'.*double"):
        node.patch(flux, 3.0, -1.0, 0.0, 1.0, "middle", "", 0.0)
    with pytest.raises(errors.ConduitError, match=r"'o1' is not understood.*d = double"):
        node.patch(flux, 3.0, -1.0, 0.0, 1.0, "custom", "o1", 0.0)
    with pytest.raises(errors.ConduitError, match=r"'s5' names no .*d0, d1, s0, s1"):
        node.patch(flux, 3.0, -1.0, 0.0, 1.0, "custom", "s5", 0.0)
    with pytest.raises(errors.ConduitError, match=r"'d1\.0' is not understood"):
        node.patch(flux, 3.0, -1.0, 0.0, 1.0, "custom", "d1.0", 0.0)
    assert math.isfinite(float(run(node.patch(flux, 3.0, -1.0, 0.0, 1.0, "custom", "D1, s0-1", 0.0)[0],
                                   "flux", steps=1).abs().max()))


def test_a_node_not_built_for_dits_refuses_them_by_name(flux):
    from conduit_pack.patches.engine.families import family_of

    with pytest.raises(errors.ConduitError, match=r"\[Some UNet Node\] Flux models are not supported by this "
                                                  r"node yet.*SD1\.x, SD2\.x, SDXL"):
        family_of(flux, "Some UNet Node")
    assert family_of(flux, "SEG", ("unet", "dit")).id == "flux"
