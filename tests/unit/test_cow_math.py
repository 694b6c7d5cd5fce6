"""COW pure math: boxes, seed canvas, cycle plan, sigma-space DDIM steps, inversion and renoise constants."""
import math

import pytest
import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.cow.cow_math as cm
import conduit_pack.patches.engine.errors as errors

NODE = "Test Node"


# ------------------------------------------------------------------------------------------------ boxes

def test_normalized_box_maps_to_canvas_pixels():
    assert cm.box_to_pixels(0.25, 0.5, 0.5, 0.25, "normalized", 640, 320) == (160.0, 160.0, 320.0, 80.0)
    assert cm.box_to_pixels(3, 4, 5, 6, "pixels", 640, 320) == (3.0, 4.0, 5.0, 6.0)


def test_box_outside_canvas_is_clamped_and_flagged():
    box, cut = cm.clamp_box(-16, 500, 100, 100, 512, 520, NODE)
    assert cut and box == (0.0, 500.0, 84.0, 20.0)
    box, cut = cm.clamp_box(8, 8, 100, 100, 512, 520, NODE)
    assert not cut and box == (8, 8, 100, 100)


@pytest.mark.parametrize("box", [(600, 0, 50, 50), (0, -80, 50, 50), (10, 10, 0, 30), (float("nan"), 0, 9, 9)])
def test_empty_or_broken_box_is_a_conduit_error(box):
    with pytest.raises(errors.ConduitError, match=r"\[Test Node\]"):
        cm.clamp_box(*box, 512, 512, NODE)


def test_snap_box_lands_on_the_latent_grid_and_stays_inside():
    b = cm.snap_box(13, 3, 250, 255, 512, 512)
    assert (b.x, b.y, b.w, b.h) == (16, 0, 248, 256)
    tiny = cm.snap_box(509, 509, 3, 3, 512, 512)
    assert (tiny.x, tiny.y, tiny.w, tiny.h) == (504, 504, 8, 8)
    assert all(v % 8 == 0 for v in (b.x, b.y, b.w, b.h))
    assert b.latent == (2, 0, 31, 32)


def test_canvas_size_must_be_multiple_of_8():
    cm.check_canvas_size(520, 200, NODE)
    with pytest.raises(errors.ConduitError, match="multiple of 8"):
        cm.check_canvas_size(516, 200, NODE)


# ----------------------------------------------------------------------------------------- seed canvas

def test_seed_canvas_places_crop_gray_and_masks():
    img = torch.rand(40, 30, 3)
    keep = torch.zeros(40, 30)
    keep[:, :15] = 1.0  # left half is the condition
    box = cm.PixelBox(16, 8, 64, 32)
    s = cm.seed_canvas(img, keep, box, canvas_w=120, canvas_h=48, gray=0.25)
    assert s.canvas.shape == (48, 120, 3) and s.crop.shape == (32, 64, 3)
    outside = torch.ones(48, 120, dtype=torch.bool)
    outside[8:40, 16:80] = False
    assert torch.all(s.canvas[outside] == 0.25)
    assert torch.equal(s.canvas[8:40, 16:80], s.crop)
    assert torch.all(s.crop[:, 40:] == 0.25)  # dropped half of the mask became gray
    assert not torch.all(s.crop[:, :24] == 0.25)
    assert s.crop_latent_mask.shape == (4, 8) and s.canvas_latent_mask.shape == (6, 15)
    assert s.crop_latent_mask[:, :4].sum() == 16 and s.crop_latent_mask[:, 4:].sum() == 0
    assert torch.equal(s.canvas_latent_mask[1:5, 2:10], s.crop_latent_mask)
    assert s.canvas_latent_mask.sum() == s.crop_latent_mask.sum()


def test_seed_canvas_without_mask_keeps_everything_and_crop_fit_keeps_aspect():
    img = torch.zeros(20, 40, 3)
    img[:, 10:30] = 1.0  # white centre square of a wide image
    s = cm.seed_canvas(img, None, cm.PixelBox(0, 0, 16, 16), 32, 32, fit="crop")
    assert s.crop_latent_mask.sum() == 4
    assert s.crop.min() > 0.9  # only the white centre survives the centre crop
    s2 = cm.seed_canvas(img, None, cm.PixelBox(0, 0, 16, 16), 32, 32, fit="stretch")
    assert s2.crop.min() < 0.1


def test_paste_latent_places_crop_latent():
    lat = torch.randn(1, 4, 2, 3)
    out = cm.paste_latent(lat, cm.PixelBox(8, 16, 24, 16), (5, 6))
    assert torch.equal(out[..., 2:4, 1:4], lat)
    assert float(out.abs().sum()) == pytest.approx(float(lat.abs().sum()))


# ------------------------------------------------------------------------------------------ cycle plan

def test_official_plan_for_ten_steps():
    plan = cm.cycle_plan(10, 0.7, 0.5, 0.4, 10, NODE)
    # reference: cycle between timesteps 601 and 401 (levels 3..5 of [901..1, 0]), preservation at 301
    assert (plan.top, plan.bottom, plan.preserve) == (3, 5, 6)
    assert plan.model_steps() == (20, 5)
    ops = plan.ops()
    first = ops[:6]
    assert [(o.kind, o.level) for o in first] == [("renoise", 3), ("inject", 3), ("step", 3), ("inject", 4),
                                                  ("step", 4), ("inject", 5)]
    # every in-cycle step is followed by an injection of the level it lands on
    for a, b in zip(ops, ops[1:]):
        if a.kind == "step" and a.phase == "cycle":
            assert b.kind == "inject" and b.level == a.level + 1
    preserve = [i for i, o in enumerate(ops) if o.kind == "inject" and o.phase == "preserve"]
    assert len(preserve) == 1
    before = ops[preserve[0] - 1]
    assert before.kind == "step" and before.phase == "final" and before.level == 5  # reference step 4: 401->301
    finals = [o.level for o in ops if o.kind == "step" and o.phase == "final"]
    assert finals == [5, 6, 7, 8, 9]
    assert plan.levels_needed == [3, 4, 5, 6]


def test_plan_options_and_errors():
    assert cm.cycle_plan(10, 0.7, 0.5, -1, 3, NODE).preserve is None
    zero = cm.cycle_plan(10, 0.7, 0.5, 0.0, 0, NODE)
    assert zero.preserve == 10 and zero.ops()[0] == cm.Op("inject", 5, "start")
    assert cm.cycle_plan(50, 0.7, 0.5, 0.4, 1, NODE).top == 15
    with pytest.raises(errors.ConduitError, match="cycle start"):
        cm.cycle_plan(4, 0.7, 0.5, 0.4, 10, NODE)  # int(2.8) == int(2.0)
    with pytest.raises(errors.ConduitError, match="preservation"):
        cm.cycle_plan(10, 0.7, 0.5, 0.5, 10, NODE)
    with pytest.raises(errors.ConduitError):
        cm.cycle_plan(10, 0.5, 0.7, 0.4, 10, NODE)
    assert cm.fraction_index(0.7, 10) == 7 and cm.fraction_index(0.57, 100) == 57


# -------------------------------------------------------------------------------- DDPM reference oracle

def sd_alphas_cumprod():
    """SD's scaled-linear schedule, computed independently of ComfyUI."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def sigma_of(t):
    a = float(sd_alphas_cumprod()[t])
    return math.sqrt((1 - a) / a)


def test_schedule_reference_values_from_spec():
    spec = {1: (0.998, 0.041), 101: (0.893, 0.346), 401: (0.423, 1.168), 601: (0.160, 2.293), 901: (0.014, 8.391)}
    for t, (a, s) in spec.items():
        assert float(sd_alphas_cumprod()[t]) == pytest.approx(a, abs=2e-3)
        assert sigma_of(t) == pytest.approx(s, abs=2e-3)


def test_exact_renoise_matches_ddpm_closed_form():
    """q(x_hi | x_lo) = N(sqrt(a_hi/a_lo) x_lo, 1 - a_hi/a_lo) in DDPM scale, mapped to VE latents."""
    lo, hi = sigma_of(401), sigma_of(601)
    a_lo, a_hi = cm.alpha_bar(lo), cm.alpha_bar(hi)
    sig_scale, noise_std = cm.renoise_exact(lo, hi)
    # VE x = ddpm / sqrt(a): convert the VE coefficients back to DDPM scale
    assert sig_scale * math.sqrt(a_hi) / math.sqrt(a_lo) == pytest.approx(math.sqrt(a_hi / a_lo), rel=1e-9)
    assert noise_std * math.sqrt(a_hi) == pytest.approx(math.sqrt(1 - a_hi / a_lo), rel=1e-9)
    assert math.sqrt(a_hi / a_lo) == pytest.approx(0.615, abs=1e-3)
    assert math.sqrt(1 - a_hi / a_lo) == pytest.approx(0.789, abs=1e-3)
    assert noise_std == pytest.approx(1.97, abs=0.01)


def test_reference_compatible_renoise_reproduces_official_constants():
    # ddim_uniform, 10 steps: sigmas at timesteps 901, 801, ..., 1, then 0
    sigmas = [sigma_of(t) for t in range(901, 0, -100)] + [0.0]
    plan = cm.cycle_plan(10, 0.7, 0.5, 0.4, 10, NODE)
    a, b = cm.renoise_coefficients(sigmas, plan.bottom, plan.top, "reference-compatible", NODE)
    lo, hi = sigmas[plan.bottom], sigmas[plan.top]
    # back in DDPM scale: the official x * 0.546 + 0.838 * eps (alphas of timesteps 501 and 701)
    assert a * math.sqrt(cm.alpha_bar(hi)) / math.sqrt(cm.alpha_bar(lo)) == pytest.approx(0.546, abs=1e-3)
    assert b * math.sqrt(cm.alpha_bar(hi)) == pytest.approx(0.838, abs=1e-3)
    # in sigma space: signal shrinks by ~11 %, noise 2.10 where 1.97 would be exact
    assert a == pytest.approx(0.888, abs=2e-3) and b == pytest.approx(2.10, abs=0.01)
    ea, eb = cm.renoise_coefficients(sigmas, plan.bottom, plan.top, "exact", NODE)
    assert ea == 1.0 and eb == pytest.approx(1.97, abs=0.01)
    with pytest.raises(errors.ConduitError, match="reference-compatible"):
        cm.renoise_coefficients(sigmas, 5, 0, "reference-compatible", NODE)


def renoised_by_the_sampler(mode, x_lo, sigmas, seed=0):
    """Run the pack's COW sampler (one cycle, a model that predicts 0) and return the latent right after its
    renoise op. The in-place inversion's level `bottom` is the background seed, so the op starts from x_lo."""
    import conduit_pack.patches.cow.sampler as cs
    plan = cm.cycle_plan(len(sigmas) - 1, 0.7, 0.5, 0.4, 1, NODE)
    start = torch.randn(x_lo.shape, generator=torch.Generator().manual_seed(99), dtype=x_lo.dtype)
    levels = {k: torch.zeros_like(x_lo) for k in plan.levels_needed}
    levels[plan.steps], levels[plan.bottom] = start, x_lo
    inv = cs.CowInversion(list(sigmas), levels, torch.zeros(x_lo.shape[-2:]), "in place", 1.0, 0)
    seen = []
    spec = cs.CowSpec(inv, cycles=1, renoise=mode, seed=seed,
                      observer=lambda op, x: seen.append(x.clone()) if op.kind == "renoise" else None)
    cs.sample_cow(lambda x, s, **kw: torch.zeros_like(x), start, torch.tensor(sigmas, dtype=torch.float64),
                  cow=spec)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("mode", ["exact", "reference-compatible"])
def test_sampler_renoise_has_the_closed_form_statistics(mode):
    """The renoise inside a cycle, sampled by the pack's sampler, has the mean factor and noise std of its
    closed form, derived here from the DDPM schedule alone (levels 401 -> 601 of ddim_uniform, 10 steps).

    exact: q(x_601 | x_401) = N(sqrt(a601/a401) x, 1 - a601/a401) in DDPM scale; VE x = ddpm / sqrt(a), so the
    VE latent keeps its signal and gains noise std sqrt(1/a601 - 1/a401).
    reference-compatible (spec 1.3, off by one): the official code mixes with the alphas of 501 and 701,
    x * sqrt(a701/a501) + sqrt(1 - a701/a501) * eps, on the DDPM latent at 401, and the next step reads the
    result as a latent at 601."""
    ab = sd_alphas_cumprod()
    a401, a501, a601, a701 = (float(ab[t]) for t in (401, 501, 601, 701))
    if mode == "exact":
        want_a, want_b = 1.0, math.sqrt(1 / a601 - 1 / a401)
        assert want_b == pytest.approx(1.97, abs=0.01)  # spec: "1.97 would be exact"
    else:
        want_a = math.sqrt(a701 / a501) * math.sqrt(a401 / a601)
        want_b = math.sqrt(1 - a701 / a501) / math.sqrt(a601)
        assert math.sqrt(a701 / a501) == pytest.approx(0.546, abs=1e-3)  # spec's DDPM-scale constants
        assert math.sqrt(1 - a701 / a501) == pytest.approx(0.838, abs=1e-3)
        assert want_a == pytest.approx(0.888, abs=2e-3) and want_b == pytest.approx(2.10, abs=0.01)
    sigmas = [sigma_of(t) for t in range(901, 0, -100)] + [0.0]
    gen = torch.Generator().manual_seed(4)
    x_lo = torch.randn(1, 4, 200, 250, generator=gen, dtype=torch.float64) * 1.3 + 0.4
    out = renoised_by_the_sampler(mode, x_lo, sigmas)
    x, y = x_lo.flatten(), out.flatten()
    xc = x - x.mean()
    a_hat = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    resid = y - a_hat * x
    assert a_hat == pytest.approx(want_a, abs=0.015)  # standard error ~0.004
    assert float(resid.std()) == pytest.approx(want_b, rel=0.01)  # standard error ~0.2 %
    assert abs(float(resid.mean())) < 0.03  # zero-mean noise: no offset
    # a different sampler seed draws other noise with the same statistics; the same seed the same noise
    again = renoised_by_the_sampler(mode, x_lo, sigmas)
    other = renoised_by_the_sampler(mode, x_lo, sigmas, seed=1)
    assert torch.equal(out, again) and not torch.allclose(out, other)


def test_ddim_eta_step_equals_ddpm_form():
    """DDIM(eta) written with alphas (Song et al.) equals our sigma-space step on VE latents."""
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(64, generator=gen, dtype=torch.float64)
    eps = torch.randn(64, generator=gen, dtype=torch.float64)
    z = torch.randn(64, generator=gen, dtype=torch.float64)
    t, tp = 601, 501
    a_t, a_p = float(sd_alphas_cumprod()[t]), float(sd_alphas_cumprod()[tp])
    for eta in (0.0, 0.1, 1.0):
        s_t = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        ddpm_next = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - s_t ** 2) * eps + s_t * z
        sig, sig_next = sigma_of(t), sigma_of(tp)
        x_ve = x0 + sig * eps
        ours = cm.ddim_step(x_ve, x0, sig, sig_next, eta, z)
        assert torch.allclose(ours * math.sqrt(a_p), ddpm_next, atol=1e-9)
    assert cm.ddim_step(x_ve, x0, sig, 0.0, 1.0, None).equal(x0)


def test_inversion_step_equals_diffusers_inverse_ddim():
    """DDIMInverseScheduler: x_next = sqrt(a_next) * x0_pred + sqrt(1 - a_next) * eps with eps = net(x, t_next)."""
    gen = torch.Generator().manual_seed(2)
    x_ddpm = torch.randn(32, generator=gen, dtype=torch.float64)
    eps = torch.randn(32, generator=gen, dtype=torch.float64)
    a_cur, a_next = float(sd_alphas_cumprod()[401]), float(sd_alphas_cumprod()[501])
    x0_pred = (x_ddpm - math.sqrt(1 - a_cur) * eps) / math.sqrt(a_cur)
    ref_next = math.sqrt(a_next) * x0_pred + math.sqrt(1 - a_next) * eps
    s_cur, s_next = sigma_of(401), sigma_of(501)
    x_ve = x_ddpm / math.sqrt(a_cur)
    model_input = x_ve * cm.inversion_input_scale(s_cur, s_next)
    # ComfyUI feeds model_input * c_in to the network: exactly the DDPM latent the reference feeds
    assert torch.allclose(model_input / math.sqrt(1 + s_next ** 2), x_ddpm, atol=1e-12)
    denoised = model_input - s_next * eps  # an epsilon model's denoised output
    ours = cm.inversion_step(x_ve, model_input, denoised, s_cur, s_next)
    assert torch.allclose(ours * math.sqrt(a_next), ref_next, atol=1e-9)


def gaussian_denoiser(scale):
    """Exact denoiser for data ~ N(0, scale^2): its probability-flow ODE is x(s) = x0 * sqrt(scale^2 + s^2) / scale."""
    return lambda x, s: x * scale ** 2 / (scale ** 2 + s ** 2)


def gaussian_round_trip(steps):
    """(inversion error vs the exact ODE solution, round-trip error), both relative."""
    scale = 0.8
    d = gaussian_denoiser(scale)
    sig = [float(s) for s in torch.linspace(6.0, 0.05, steps)] + [0.0]
    x0 = torch.randn(100, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    top = steps // 2
    x = x0
    for k in range(steps, top, -1):  # invert: level k -> k - 1
        a, b = sig[k], sig[k - 1]
        inp = x * cm.inversion_input_scale(a, b)
        x = cm.inversion_step(x, inp, d(inp, b), a, b)
    exact = x0 * math.sqrt(scale ** 2 + sig[top] ** 2) / scale
    inv_err = float((x - exact).abs().max() / exact.abs().max())
    for k in range(top, steps):  # regenerate deterministically
        x = cm.ddim_step(x, d(x, sig[k]), sig[k], sig[k + 1], 0.0, None)
    return inv_err, float((x - x0).abs().max() / x0.abs().max())


def test_inversion_round_trip_on_an_exact_denoiser_converges():
    errs = [gaussian_round_trip(n) for n in (10, 40, 160)]
    assert errs[0][0] < 0.2 and errs[0][1] < 0.25
    assert errs[2][0] < 0.02 and errs[2][1] < 0.01
    for (i1, r1), (i2, r2) in zip(errs, errs[1:]):  # first-order method: 4x the steps, >= 2.5x less error
        assert i2 < i1 / 2.5 and r2 < r1 / 2.5


def test_inject_and_masked_uncond():
    x = torch.zeros(1, 4, 3, 3)
    cond = torch.ones(1, 4, 3, 3)
    m = torch.zeros(3, 3)
    m[1, 1] = 1
    out = cm.inject(x, cond, m)
    assert out.sum() == 4 and torch.all(out[..., 1, 1] == 1)
    neg, sup, div = torch.full((1, 1, 3, 3), 1.0), torch.full((1, 1, 3, 3), 5.0), torch.full((1, 1, 3, 3), 2.0)
    u = cm.masked_uncond(neg, sup, div, m)
    assert u[0, 0, 1, 1] == 1.0 and u[0, 0, 0, 0] == 1.0 + 5.0 - 2.0
    assert torch.equal(cm.masked_uncond(neg, None, None, m), neg)
    assert cm.masked_uncond(neg, sup, None, m)[0, 0, 0, 0] == 5.0


def test_ancestral_split_matches_k_diffusion_formula():
    for s, sn, eta in ((8.39, 5.13, 1.0), (2.29, 1.62, 0.1), (1.0, 0.5, 0.0)):
        down, up = cm.ancestral_sigmas(s, sn, eta)
        ref_up = min(sn, eta * (sn ** 2 * (s ** 2 - sn ** 2) / s ** 2) ** 0.5)
        assert up == pytest.approx(ref_up) and down == pytest.approx((sn ** 2 - ref_up ** 2) ** 0.5)
