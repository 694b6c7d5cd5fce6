"""Abs-Grad-SAM nodes on tiny SD1.5- and SDXL-shaped models: ComfyUI's execution mode, invariants,
replacement, bad input, and the SamplerCustom / SamplerCustomAdvanced / all-in-one paths."""
import logging

import pytest
import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from conduit_pack.toyworld import build

import conduit_pack.nodes
import conduit_pack.patches.engine.errors as errors
import conduit_pack.patches.gradsam.gradsam_math as gm

nodes = conduit_pack.nodes.NODE_CLASS_MAPPINGS

PROMPT = "a photo of a cat sitting on a wooden bench in a park"
LATENT = (32, 32)
STEPS = 6
OPTS = dict(layers="last", score="abs", kappa=0.5, threshold_over="each subject", blur_sigma=1.0, dilation=1,
            custom_layers="")


@pytest.fixture(scope="module")
def clips():
    return {"sd15": build.build_clip("sd15", 1), "sdxl": build.build_clip("sdxl", 1)}


@pytest.fixture(params=["sd15", "sdxl"])
def family(request):
    return request.param


@pytest.fixture
def tiny(family, tiny_sd15, tiny_sdxl):
    return {"sd15": tiny_sd15, "sdxl": tiny_sdxl}[family]


def encode(clip, text):
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def latent(batch=1, seed=0, hw=LATENT):
    return {"samples": torch.randn(batch, 4, *hw, generator=torch.Generator().manual_seed(seed))}


def sigmas_for(model, steps=STEPS, denoise=1.0):
    from comfy_extras.nodes_custom_sampler import BasicScheduler

    return BasicScheduler().get_sigmas(model, "normal", steps, denoise)[0]


def gradsam_sampler(clip, reference, subject="cat", percents=None, sampler_name="euler", **over):
    opts = {**OPTS, **over}
    percents = ", ".join(f"{p:.3f}" for p in gm.DEFAULT_PERCENTS) if percents is None else percents
    return nodes["ConduitGradSAMSampler"]().build(clip, PROMPT, subject, reference, sampler_name, percents, 7,
                                                  **opts)[0]


def custom(model, clip, sampler, seed=3, empty=None, cfg=6.0, sigmas=None):
    from comfy_extras.nodes_custom_sampler import SamplerCustom

    pos, neg = encode(clip, PROMPT), encode(clip, "")
    sigmas = sigmas_for(model) if sigmas is None else sigmas
    return SamplerCustom().sample(model, True, seed, cfg, pos, neg, sampler, sigmas,
                                  empty or {"samples": torch.zeros(1, 4, *LATENT)})[0]["samples"]


def expected_steps(model, sigmas, percents=gm.DEFAULT_PERCENTS):
    """Independent pick: for each target level, the first later schedule entry at or below it."""
    ms = model.model.model_sampling
    out = set()
    for p in percents:
        target = float(ms.percent_to_sigma(p))
        later = [i for i in range(1, len(sigmas) - 1) if float(sigmas[i]) <= target]
        if later and float(sigmas[0]) > target:
            out.add(later[0])
    return sorted(out)


def snapshot(model):
    sd = {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}
    flags = {k: (p.requires_grad, p.is_inference()) for k, p in model.model.diffusion_model.named_parameters()}
    to = model.model_options.get("transformer_options", {})
    return (sd, flags, repr(sorted(model.model_options)), repr(to.get("patches", {})),
            repr(to.get("patches_replace", {})))


def assert_same(a, b):
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert a[1:] == b[1:]


def test_runs_as_comfyui_executes_it_under_inference_mode(family, clips):
    """ComfyUI loads and runs everything inside torch.inference_mode(): the weights are inference tensors."""
    from comfy_extras.nodes_custom_sampler import SamplerCustom

    with torch.inference_mode():
        model = build.build_unet(family, 0)
        clip = build.build_clip(family, 1)
        assert next(model.model.diffusion_model.parameters()).is_inference()
        before = snapshot(model)
        ref = latent(seed=1)
        out, masks = nodes["ConduitGradSAMKSampler"]().sample(
            model, encode(clip, PROMPT), encode(clip, ""), {"samples": torch.zeros(1, 4, *LATENT)}, ref, clip,
            PROMPT, "cat, bench", 3, STEPS, 6.0, "euler", "normal", 1.0,
            ", ".join(f"{p:.3f}" for p in gm.DEFAULT_PERCENTS), 7, **OPTS)
        assert torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
        sampler = gradsam_sampler(clip, ref, "cat, bench")
        pos, neg = encode(clip, PROMPT), encode(clip, "")
        again = SamplerCustom().sample(model, True, 3, 6.0, pos, neg, sampler, sigmas_for(model),
                                       {"samples": torch.zeros(1, 4, *LATENT)})[0]
        _, masks_again = nodes["ConduitGradSAMMasks"]().read(sampler, again)
        after = snapshot(model)
    n = len(expected_steps(model, sigmas_for(model)))
    assert n >= 2 and masks.shape == (n, LATENT[0] * 8, LATENT[1] * 8)
    assert set(masks.unique().tolist()) <= {0.0, 1.0} and 0 < float(masks.mean()) < 1
    assert torch.isfinite(out["samples"]).all()
    assert torch.equal(again["samples"], out["samples"]) and torch.equal(masks_again, masks)
    assert_same(before, after)  # weights, their inference/grad flags and the patches are as they were


def test_no_manipulation_step_is_bit_identical_to_vanilla(tiny, clips, family):
    import comfy.samplers

    clip, model = clips[family], tiny.model
    late = sigmas_for(model, 3, denoise=0.5)  # img2img-style run starting half way
    start = {"samples": torch.randn(1, 4, *LATENT, generator=torch.Generator().manual_seed(4))}
    for name in ("euler", "euler_ancestral"):
        vanilla = custom(model, clip, comfy.samplers.sampler_object(name))
        ours = custom(model, clip, gradsam_sampler(clip, latent(seed=1), percents="", sampler_name=name))
        assert torch.equal(ours, vanilla), name
        # a manipulation step before the run's start is skipped
        vanilla = custom(model, clip, comfy.samplers.sampler_object(name), empty=start, sigmas=late)
        ours = custom(model, clip, gradsam_sampler(clip, latent(seed=1), percents="0.1", sampler_name=name),
                      empty=start, sigmas=late)
        assert torch.equal(ours, vanilla), name


def test_deterministic_and_model_unchanged(tiny, clips, family):
    clip, model = clips[family], tiny.model
    before = snapshot(model)
    a = custom(model, clip, gradsam_sampler(clip, latent(seed=1)))
    b = custom(model, clip, gradsam_sampler(clip, latent(seed=1)))
    assert torch.equal(a, b)
    assert_same(before, snapshot(model))
    import comfy.samplers
    assert not torch.equal(a, custom(model, clip, comfy.samplers.sampler_object("euler")))


def test_replacement_keeps_subject_and_pastes_noised_reference(tiny, clips, family, monkeypatch):
    clip, model = clips[family], tiny.model
    seen = []
    real = gm.replace_background

    def spy(x, noised, keep):
        out = real(x, noised, keep)
        seen.append((x.clone(), noised.clone(), keep.clone(), out.clone()))
        return out

    monkeypatch.setattr(gm, "replace_background", spy)
    backward = []
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: backward.append(1) or real_grad(*a, **k))
    ref = latent(seed=5)
    sampler = gradsam_sampler(clip, ref, "cat", dilation=0)
    custom(model, clip, sampler)
    run = sampler.conduit_gradsam
    sigmas = sigmas_for(model)
    steps = expected_steps(model, sigmas)
    assert [m.index for m in run.masks] == steps and len(seen) == len(steps) == len(backward)  # one pass each
    ref_in = model.model.process_latent_in(ref["samples"])
    noise = torch.randn(ref_in.shape, generator=torch.Generator().manual_seed(7))
    for (x, noised, keep, out), m in zip(seen, run.masks):
        k = keep.expand_as(x)
        assert 0 < int(keep.sum()) < keep.numel()
        assert torch.equal(out[k], x[k])  # subject: untouched
        assert torch.equal(out[~k], noised[~k])  # background: the noised reference, exactly
        torch.testing.assert_close(noised, ref_in + float(sigmas[m.index]) * noise)  # one fixed noise
        assert torch.equal(keep.cpu(), m.mask)


def test_samplercustomadvanced_matches_samplercustom(clips, tiny_sdxl):
    nodes_cs = pytest.importorskip("comfy_extras.nodes_custom_sampler")
    if not hasattr(nodes_cs, "SamplerCustomAdvanced"):
        pytest.skip("this host has no SamplerCustomAdvanced")
    clip, model = clips["sdxl"], tiny_sdxl.model
    ref = latent(seed=1)
    plain = custom(model, clip, gradsam_sampler(clip, ref))
    guider = nodes_cs.CFGGuider().get_guider(model, encode(clip, PROMPT), encode(clip, ""), 6.0)[0]
    noise = nodes_cs.RandomNoise().get_noise(3)[0]
    sampler = gradsam_sampler(clip, ref)
    out = nodes_cs.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas_for(model),
                                                  {"samples": torch.zeros(1, 4, *LATENT)})[0]
    assert torch.equal(out["samples"], plain)
    assert len(sampler.conduit_gradsam.masks) >= 2


def test_batch_and_mask_node(tiny, clips, family):
    clip, model = clips[family], tiny.model
    out, masks = nodes["ConduitGradSAMKSampler"]().sample(
        model, encode(clip, PROMPT), encode(clip, ""), {"samples": torch.zeros(2, 4, *LATENT)}, latent(seed=1),
        clip, PROMPT, "", 3, 4, 6.0, "euler", "normal", 1.0, "0.5", 7, **OPTS)
    assert out["samples"].shape == (2, 4, *LATENT) and masks.shape == (2, 256, 256)
    mask, importance = nodes["ConduitGradSAMMask"]().inspect(
        model, encode(clip, PROMPT), encode(clip, ""), latent(seed=2), clip, PROMPT, "cat", 0.3, 0, **OPTS)
    assert mask.shape == importance.shape == (1, 256, 256)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert float(importance.min()) == 0.0 and float(importance.max()) == 1.0 and importance.std() > 0
    tight, _ = nodes["ConduitGradSAMMask"]().inspect(
        model, encode(clip, PROMPT), encode(clip, ""), latent(seed=2), clip, PROMPT, "cat", 0.3, 0,
        **{**OPTS, "kappa": 2.0})
    assert float(tight.sum()) < float(mask.sum())


def test_bad_input(tiny, clips, family, caplog):
    clip, model = clips[family], tiny.model
    with pytest.raises(errors.ConduitError, match=r"subject 'dog' is not in the prompt.*a, photo, of, a, cat"):
        gradsam_sampler(clip, latent(), "dog")
    with pytest.raises(errors.ConduitError, match="step_percents"):
        gradsam_sampler(clip, latent(), "cat", percents="0.2, 1.5")
    with pytest.raises(errors.ConduitError, match="'o9.9' names no cross-attention layer"):
        custom(model, clip, gradsam_sampler(clip, latent(), "cat", layers="custom", custom_layers="o9.9"))
    with pytest.raises(errors.ConduitError, match="custom_layers is set"):
        custom(model, clip, gradsam_sampler(clip, latent(), "cat", custom_layers="o5"))
    with pytest.raises(errors.ConduitError, match="reference has 2 images"):
        custom(model, clip, gradsam_sampler(clip, latent(batch=2)), empty={"samples": torch.zeros(3, 4, *LATENT)})
    with caplog.at_level(logging.WARNING):
        out = custom(model, clip, gradsam_sampler(clip, latent(hw=(20, 24))))
    assert out.shape == (1, 4, *LATENT)
    assert any("resized" in r.getMessage() and "24x20" in r.getMessage() for r in caplog.records)


def test_no_subject_signal_keeps_everything(tiny_sd15, clips, monkeypatch, caplog):
    """A flat importance map has nothing to threshold: the step replaces nothing (instead of everything), and
    since euler has no memory, splitting the run at the steps leaves the result bit-identical to plain euler."""
    import comfy.samplers

    clip, model = clips["sd15"], tiny_sd15.model
    monkeypatch.setattr(gm, "token_importance", lambda a, g, mode="abs": torch.zeros(a.shape[0], a.shape[2]))
    sampler = gradsam_sampler(clip, latent(seed=1))
    with caplog.at_level(logging.WARNING):
        ours = custom(model, clip, sampler)
    assert len(sampler.conduit_gradsam.masks) >= 2 and all(m.mask.all() for m in sampler.conduit_gradsam.masks)
    assert any("no subject signal" in r.getMessage() for r in caplog.records)
    assert torch.equal(ours, custom(model, clip, comfy.samplers.sampler_object("euler")))


def test_chains_to_another_packs_attention_replace(tiny_sdxl, clips):
    """Another pack's attn2 replace on the scored layer still runs (its value is kept) during the pass."""
    import conduit_pack.patches.engine.attention as attention
    import conduit_pack.patches.gradsam.gradient_pass as gp
    clip = clips["sdxl"]
    key = gp.choose_layers(tiny_sdxl.model.model, "last", "", "t")[0].key
    model = tiny_sdxl.model.clone()
    calls = []

    def other(inner):
        def fn(q, k, v, extra):
            calls.append(torch.is_grad_enabled())
            return inner(q, k, v, extra) * 0.5
        return fn

    attention.set_replace(model, "attn2", key, other)
    before = attention.existing_replace(model.model_options, "attn2", key)
    sampler = gradsam_sampler(clip, latent(seed=1))
    out = custom(model, clip, sampler)
    n = len(sampler.conduit_gradsam.masks)
    assert n >= 2 and calls.count(True) == n  # its function ran inside each gradient pass
    assert attention.existing_replace(model.model_options, "attn2", key) is before
    assert not torch.equal(out, custom(tiny_sdxl.model, clip, gradsam_sampler(clip, latent(seed=1))))


def test_legal_inputs_that_do_nothing_are_warned(tiny_sd15, clips, caplog):
    clip, model = clips["sd15"], tiny_sd15.model

    def warnings_of(fn):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            fn()
        return " | ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)

    text = warnings_of(lambda: custom(model, clip, gradsam_sampler(clip, latent(), ",,, ,")))
    assert "holds no word" in text and "',,, ,'" in text
    text = warnings_of(lambda: custom(model, clip, gradsam_sampler(clip, latent(), "cat", percents="1e-300")))
    assert "1 of the 1 step_percents" in text
    assert "1 of the 1" not in warnings_of(lambda: custom(model, clip, gradsam_sampler(clip, latent(), "cat",
                                                                                      percents="0.5")))
    small = {"samples": torch.zeros(1, 4, 8, 8)}
    text = warnings_of(lambda: custom(model, clip, gradsam_sampler(clip, {"samples": torch.zeros(1, 4, 8, 8)},
                                                                   "cat", percents="0.5", dilation=64),
                                      empty=small))
    assert "covers the whole latent" in text
    text = warnings_of(lambda: nodes["ConduitGradSAMKSampler"]().sample(
        model, encode(clip, PROMPT), encode(clip, ""), latent(), latent(seed=1), clip, PROMPT, "cat", 3, 4, 6.0,
        "euler", "normal", 0.0, "0.5", 7, **OPTS))
    assert "denoise is 0" in text
