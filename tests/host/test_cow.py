"""COW against ComfyUI's real sampler: inversion round trip, one-way property, preservation, UNet budget."""
import logging
import math

import pytest
import torch

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.nodes.cow as cow
import conduit_pack.patches.cow.cow_math as cm
import conduit_pack.patches.cow.sampler as cs
import conduit_pack.patches.engine.host as compat
import conduit_pack.patches.engine.errors as errors

CANVAS = (128, 96)  # width, height in pixels -> 16 x 12 latent


def schedule(model, steps, scheduler="ddim_uniform"):
    return cs.model_sigmas(model, scheduler, steps)


def sample_zero_noise(model, pos, neg, sampler, sigmas, latent, cfg):
    import comfy.sample

    return comfy.sample.sample_custom(model, torch.zeros_like(latent), cfg, sampler, sigmas, pos, neg, latent,
                                      disable_pbar=True, seed=0)


def seeded(box=(32, 0, 64, 64), canvas=CANVAS, mask=None):
    img = torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(5))
    return cow.ConduitCOWSeedCanvas().make(img, canvas[0], canvas[1], *box, "pixels", "stretch", cm.GRAY,
                                           mask=mask)


def latents(seed_obj, gen_seed=7):
    g = torch.Generator().manual_seed(gen_seed)
    lx, ly, lw, lh = seed_obj.box.latent
    h, w = seed_obj.canvas_latent_mask.shape
    return {"samples": torch.randn(1, 4, lh, lw, generator=g)}, {"samples": torch.randn(1, 4, h, w, generator=g)}


def run_cow(tiny, mode="crop alone", steps=10, cycles=10, observer=None, seed=42, renoise="exact", cfg=7.5,
            suppress=None, diversity=None, preservation=0.4, model=None, canvas=CANVAS, box=(32, 0, 64, 64)):
    m = model or tiny.model
    pos, neg = tiny.cond(seed=0), tiny.cond(seed=1)
    sig = schedule(m, steps)
    *_, seed_obj = seeded(box=box, canvas=canvas)
    crop, canvas = latents(seed_obj)
    inv, _ = cow.ConduitCOWInvert().invert(m, pos, neg, sig, seed_obj, mode, cfg, 0.7, crop_latent=crop,
                                           canvas_latent=canvas)
    (sampler,) = cow.ConduitCOWCycleSampler().build(inv, cycles, 0.7, 0.5, 1.0, 0.1, preservation, renoise, seed,
                                                    suppress=suppress, diversity=diversity)
    if observer is not None:
        sampler.extra_options["cow"].observer = observer
    out = sample_zero_noise(m, pos, neg, sampler, sig, canvas["samples"], cfg)
    return out, inv


# ------------------------------------------------------------------------------------------- inversion

@pytest.mark.parametrize("family", ["sd15", "sd2"])  # epsilon and v-prediction
def test_inversion_round_trip_reconstructs(family):
    tiny = testing.tiny_model(family)
    m, pos, neg = tiny.model, tiny.cond(seed=0), tiny.cond(seed=1)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    scale = m.model.latent_format.scale_factor
    import comfy.samplers

    errs = {}
    for steps in (10, 40):
        sig = schedule(m, steps, "normal")
        reached = steps - cm.fraction_index(0.3, steps)
        path = cs.run_inversion(m, pos, neg, [float(s) for s in sig], z, 1.0, reached)
        assert len(path) == steps - reached + 1 and torch.allclose(path[0], z * scale)
        top = m.model.process_latent_out(path[-1])
        back = sample_zero_noise(m, pos, neg, comfy.samplers.ksampler("euler"), sig[reached:], top, 1.0)
        errs[steps] = float((back - z).abs().mean() / z.abs().mean())
        if steps == 40:  # a forward-noised latent at the same level does not come back
            noisy = z + torch.randn(z.shape, generator=torch.Generator().manual_seed(9)) * float(sig[reached]) / scale
            other = sample_zero_noise(m, pos, neg, comfy.samplers.ksampler("euler"), sig[reached:], noisy, 1.0)
            baseline = float((other - z).abs().mean() / z.abs().mean())
    assert errs[40] < 0.8, errs
    assert errs[40] < 0.6 * errs[10], errs  # finer schedule, closer reconstruction
    assert errs[40] < baseline / 4, (errs, baseline)


def test_inversion_records_levels_and_places_crop(tiny_sd15):
    out, inv = run_cow(tiny_sd15, cycles=1)
    assert sorted(inv.levels) == list(range(3, 11))
    mask = inv.mask
    for lat in inv.levels.values():
        assert lat.shape == (1, 4, 12, 16)
        assert torch.all(lat[..., :, :4] == 0) and torch.all(lat[..., :, 12:] == 0)  # crop alone: outside is 0
    assert mask.sum() == 64 and torch.all(mask[:, 4:12][:8] == 1)


# ------------------------------------------------------------------------------------- one-way property

@pytest.mark.parametrize("family", ["sd15", "sd2"])
def test_region_equals_inverted_trajectory_after_every_injection(family):
    tiny = testing.tiny_model(family)
    seen = []
    out, inv = run_cow(tiny, cycles=3, observer=lambda op, x: seen.append((op, x.clone())))
    mask = inv.mask > 0.5
    injections = [(op, x) for op, x in seen if op.kind == "inject"]
    assert len(injections) == 3 * 3 + 1
    for op, x in injections:
        target = inv.levels[op.level]
        assert torch.equal(x[..., mask], target[..., mask]), op
        assert not torch.allclose(x[..., ~mask], target[..., ~mask])  # only the region is pasted
    # model steps do change the region (the paste is what keeps it on the trajectory)
    steps = [(op, x) for op, x in seen if op.kind == "step" and op.phase == "cycle"]
    assert all(not torch.equal(x[..., mask], inv.levels[op.level + 1][..., mask]) for op, x in steps)
    assert torch.isfinite(out).all()


def test_preservation_applied_exactly_once_at_its_step(tiny_sd15):
    seen = []
    run_cow(tiny_sd15, cycles=2, observer=lambda op, x: seen.append(op))
    preserve = [i for i, op in enumerate(seen) if op.kind == "inject" and op.phase == "preserve"]
    assert len(preserve) == 1
    prev = seen[preserve[0] - 1]
    # official: after step int(0.4 * 10) = 4 counted from the clean end, i.e. ComfyUI step 5 (sigma 5 -> 6)
    assert prev.kind == "step" and prev.phase == "final" and prev.level == 5 and seen[preserve[0]].level == 6
    assert [op.level for op in seen if op.kind == "step" and op.phase == "final"] == [5, 6, 7, 8, 9]
    seen.clear()
    run_cow(tiny_sd15, cycles=2, preservation=-1.0, observer=lambda op, x: seen.append(op))
    assert not [op for op in seen if op.phase == "preserve"]


# -------------------------------------------------------------------------------------------- budget

def test_unet_evaluations_within_reference_budget(tiny_sd15):
    m, calls = cs.counting_clone(tiny_sd15.model)
    run_cow(tiny_sd15, model=m)
    assert calls[0] == 7 + 5 + 20 + 5 <= 37  # inversion, background inversion, cycles, final pass
    calls[0] = 0
    run_cow(tiny_sd15, model=m, mode="in place")
    assert calls[0] == 7 + 20 + 5  # the in-place inversion is the background seed: no second inversion
    calls[0] = 0
    run_cow(tiny_sd15, model=m, suppress=tiny_sd15.cond(seed=3), diversity=tiny_sd15.cond(seed=4))
    if compat.has_calc_cond_batch():  # four prompts in one batch
        assert calls[0] <= 37
    else:  # the 2024 host batches at most two prompts per call
        assert calls[0] == 7 + 5 + 40 + 5


# ----------------------------------------------------------------------------------------- invariants

def test_deterministic_seeded_and_model_untouched(tiny_sd15):
    m = tiny_sd15.model
    before = repr(sorted(m.model_options.get("transformer_options", {}).items())), len(m.model_options)
    pos, neg = tiny_sd15.cond(seed=0), tiny_sd15.cond(seed=1)
    plain = testing.sample(m, pos, neg, latent_hw=(12, 16), steps=3)
    a, _ = run_cow(tiny_sd15, cycles=2)
    b, _ = run_cow(tiny_sd15, cycles=2)
    c, _ = run_cow(tiny_sd15, cycles=2, seed=43)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert (repr(sorted(m.model_options.get("transformer_options", {}).items())), len(m.model_options)) == before
    assert torch.equal(plain, testing.sample(m, pos, neg, latent_hw=(12, 16), steps=3))


def ddpm_alphas_cumprod():
    """SD's scaled-linear DDPM schedule, written out here (not read from ComfyUI)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def renoise_events(tiny, renoise, cycles=3):
    """(latent before, latent after) for every renoise op of a run that has an observed latent before it
    (cycles 2.. : the previous cycle's last injection), on a 256x192 canvas (3072 latent values each)."""
    seen = []
    run_cow(tiny, cycles=cycles, renoise=renoise, canvas=(256, 192), box=(64, 0, 128, 128),
            observer=lambda op, x: seen.append((op, x.detach().double().clone())))
    events = []
    for (prev_op, before), (op, after) in zip(seen, seen[1:]):
        if op.kind == "renoise":
            assert prev_op.kind == "inject" and prev_op.level == 5 and op.level == 3
            events.append((before, after))
    assert len(events) == cycles - 1
    return events


def test_renoise_modes_match_their_closed_forms(tiny_sd15):
    """Each cycle renoises level 5 (timestep 401 of ddim_uniform, 10 steps) to level 3 (timestep 601).

    exact: x + sqrt(s601^2 - s401^2) * eps, i.e. DDPM's q(x_601 | x_401) in sigma form.
    reference-compatible (spec 1.3): the official mix x_ddpm * sqrt(a701/a501) + sqrt(1 - a701/a501) * eps,
    with the alphas one level too noisy, applied to the DDPM latent at 401 and read as a latent at 601:
    in sigma form x * 0.888 + 2.10 * eps. Both modes draw the same noise (same seed, same draws before), so
    the noise recovered from the exact run must rebuild the reference run exactly."""
    ab = ddpm_alphas_cumprod()
    a401, a501, a601, a701 = (float(ab[t]) for t in (401, 501, 601, 701))
    sig = lambda a: math.sqrt((1 - a) / a)  # noqa: E731
    ours = [float(s) for s in schedule(tiny_sd15.model, 10)]
    want_sig = [sig(float(ab[t])) for t in range(901, 0, -100)] + [0.0]
    assert ours == pytest.approx(want_sig, rel=1e-3)  # the model's ddim_uniform levels are these timesteps
    exact_b = math.sqrt(sig(a601) ** 2 - sig(a401) ** 2)
    ref_a = math.sqrt(a701 / a501) * math.sqrt(a401 / a601)
    ref_b = math.sqrt(1 - a701 / a501) / math.sqrt(a601)
    assert (exact_b, ref_a, ref_b) == pytest.approx((1.97, 0.888, 2.10), abs=0.01)  # the spec's numbers

    exact = renoise_events(tiny_sd15, "exact")
    ref = renoise_events(tiny_sd15, "reference-compatible")
    for (be, ae), (br, ar) in zip(exact, ref):
        eps = (ae - be) / exact_b  # exact mode keeps the signal: what is left is the noise
        x = be.flatten() - be.mean()
        corr = float((x * eps.flatten()).sum() / (x.norm() * eps.flatten().norm()))
        assert abs(corr) < 0.06, corr  # a signal factor != 1 would leave be in it
        assert float(eps.std()) == pytest.approx(1.0, rel=0.03) and abs(float(eps.mean())) < 0.06
        rebuilt = ref_a * br + ref_b * eps
        assert torch.allclose(ar, rebuilt, atol=2e-4 * float(ar.abs().max())), (ar - rebuilt).abs().max()
        without_offset = br + exact_b * eps  # the same renoise without the off-by-one: not what it does
        assert (ar - without_offset).abs().max() > 0.1
    assert not torch.allclose(exact[0][1], ref[0][1])


def test_masked_cfg_reduces_to_plain_cfg_when_prompts_cancel(tiny_sd15):
    plain, inv = run_cow(tiny_sd15, cycles=2)
    same = tiny_sd15.cond(seed=3)
    cancel, _ = run_cow(tiny_sd15, cycles=2, suppress=same, diversity=same)
    assert torch.allclose(plain, cancel, rtol=1e-4, atol=1e-3)
    pushed, _ = run_cow(tiny_sd15, cycles=2, suppress=tiny_sd15.cond(seed=3), diversity=tiny_sd15.cond(seed=4))
    outside = inv.mask < 0.5
    assert not torch.allclose(plain[..., outside], pushed[..., outside], atol=1e-3)


# ---------------------------------------------------------------------------------------- node paths

def test_sampler_custom_node_and_advanced(tiny_sd15, host):
    import comfy_extras.nodes_custom_sampler as ncs

    m = tiny_sd15.model
    pos, neg = tiny_sd15.cond(seed=0), tiny_sd15.cond(seed=1)
    sig = schedule(m, 10)
    *_, seed_obj = seeded()
    crop, canvas = latents(seed_obj)
    inv, _ = cow.ConduitCOWInvert().invert(m, pos, neg, sig, seed_obj, "crop alone", 7.5, 0.7, crop_latent=crop)
    (sampler,) = cow.ConduitCOWCycleSampler().build(inv, 2, 0.7, 0.5, 1.0, 0.1, 0.4, "exact", 42)
    out, _ = ncs.SamplerCustom().sample(m, False, 0, 7.5, pos, neg, sampler, sig, canvas)
    ref = sample_zero_noise(m, pos, neg, sampler, sig, canvas["samples"], 7.5)
    assert torch.allclose(out["samples"], ref, atol=1e-5)
    if hasattr(ncs, "SamplerCustomAdvanced"):
        (guider,) = ncs.CFGGuider().get_guider(m, pos, neg, 7.5)
        (noise,) = ncs.DisableNoise().get_noise()
        adv, _ = ncs.SamplerCustomAdvanced().sample(noise, guider, sampler, sig, canvas)
        assert torch.allclose(adv["samples"], ref, atol=1e-5)


def test_errors_name_the_node(tiny_sd15, caplog):
    m = tiny_sd15.model
    pos, neg = tiny_sd15.cond(seed=0), tiny_sd15.cond(seed=1)
    *_, seed_obj = seeded()
    crop, canvas = latents(seed_obj)
    sig = schedule(m, 10)
    inv, _ = cow.ConduitCOWInvert().invert(m, pos, neg, sig, seed_obj, "crop alone", 7.5, 0.5, crop_latent=crop)
    with pytest.raises(errors.ConduitError, match=r"\[Conduit COW Cycle Sampler\].*invert_to"):
        cow.ConduitCOWCycleSampler().build(inv, 2, 0.7, 0.5, 1.0, 0.1, 0.4, "exact", 42)
    with pytest.raises(errors.ConduitError, match=r"in place.*canvas_latent"):
        cow.ConduitCOWInvert().invert(m, pos, neg, sig, seed_obj, "in place", 7.5, 0.7, crop_latent=crop)
    with pytest.raises(errors.ConduitError, match="expected 64x64"):
        cow.ConduitCOWInvert().invert(m, pos, neg, sig, seed_obj, "crop alone", 7.5, 0.7, crop_latent=canvas)
    inv, _ = cow.ConduitCOWInvert().invert(m, pos, neg, sig, seed_obj, "crop alone", 7.5, 0.7, crop_latent=crop)
    (sampler,) = cow.ConduitCOWCycleSampler().build(inv, 1, 0.7, 0.5, 1.0, 0.1, 0.4, "exact", 42)
    with pytest.raises(errors.ConduitError, match="same SIGMAS"):
        sample_zero_noise(m, pos, neg, sampler, schedule(m, 12), canvas["samples"], 7.5)
    with pytest.raises(errors.ConduitError, match="seed canvas"):
        sample_zero_noise(m, pos, neg, sampler, sig, torch.zeros(1, 4, 8, 8), 7.5)
    with pytest.raises(errors.ConduitError, match="empty"):
        seeded(box=(200, 0, 64, 64))
    with caplog.at_level(logging.WARNING):
        *_, clamped = seeded(box=(96, -8, 64, 64))
    assert "clamped" in caplog.text and (clamped.box.x, clamped.box.y, clamped.box.w, clamped.box.h) == (96, 0, 32, 56)


def test_seed_canvas_mask_semantics_and_invert_toggle():
    mask = torch.zeros(1, 40, 40)
    mask[:, :, :20] = 1.0
    canvas, crop, cmask, crmask, s = seeded(mask=mask)
    assert crmask.shape == (1, 8, 8) and crmask[0, :, :4].sum() == 32 and crmask[0, :, 4:].sum() == 0
    img = torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(5))
    *_, flipped = cow.ConduitCOWSeedCanvas().make(img, 128, 96, 32, 0, 64, 64, "pixels", "stretch", cm.GRAY,
                                                  mask=mask, invert_mask=True)
    assert torch.equal(flipped.crop_latent_mask, 1 - crmask[0])
    assert canvas.shape == (1, 96, 128, 3) and cmask.shape == (1, 12, 16)
