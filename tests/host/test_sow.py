"""SOW attention modulation inside ComfyUI's UNet: oracle on real layers, chaining, phases, invariants."""
import math

import pytest
import torch

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.nodes.sow as sow
import conduit_pack.nodes.cow as cow
import conduit_pack.patches.cow.cow_math as cm
import conduit_pack.patches.sow.sow_math as sm
import conduit_pack.patches.sow.modulation as sa
import conduit_pack.patches.engine.attention as attention
import conduit_pack.patches.engine.layers as layers
import conduit_pack.patches.engine.host as compat
import conduit_pack.patches.engine.errors as errors
import conduit_pack.patches.cow.sampler  # noqa: E402

RELATED = {"x": 0.1, "y": 0.3, "w": 0.8, "h": 0.7}


def seed_obj(canvas=(128, 96)):
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    return cow.ConduitCOWSeedCanvas().make(img, canvas[0], canvas[1], 32, 0, 64, 48, "pixels", "stretch",
                                           cm.GRAY)[-1]


def patched(model, seed, **kw):
    args = dict(suppress=2.0, enhance=1.5, time_decay=1.0, time_cutoff=1.0, distance_tau=0.25, threshold=0.0,
                near_fraction=0.2, gate="soft", apply_to="cond and uncond", phases="cycles only", layers="all",
                related_box=RELATED)
    args.update(kw)
    return sow.ConduitSOWAttention().patch(model, seed, **args)[0]


def capture_layer(model, pos, neg, key, hw=(12, 16)):
    """q, k, v and extra_options that ComfyUI hands the attn1 replace at `key` on the first step."""
    got = {}
    m = model.clone()

    def make(inner):
        def fn(q, k, v, extra):
            got.setdefault("args", (q.clone(), k.clone(), v.clone(), dict(extra)))
            return inner(q, k, v, extra)
        return fn
    attention.set_replace(m, "attn1", key, make)
    testing.sample(m, pos, neg, latent_hw=hw, steps=1)
    return got["args"]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_real_layer_output_matches_dense_oracle(family):
    tiny = testing.tiny_model(family)
    pos, neg = tiny.cond(seed=0), tiny.cond(seed=1)
    seed = seed_obj()
    ms = compat.model_sampling(tiny.model)
    for layer in layers.attention_layers(tiny.model)[:3]:
        q, k, v, extra = capture_layer(tiny.model, pos, neg, layer.key)
        params = sm.SowParams(suppress=2.0, enhance=1.5, time_decay=0.7, threshold=0.0)
        related = sm.box_mask(RELATED, tuple(seed.canvas_latent_mask.shape))
        config = sa.SowConfig(params, seed.canvas_latent_mask, related)
        out = sa.make_replace(config, ms)(attention.default_attention)(q, k, v, extra)
        grid = layer.grid((12, 16))
        reg = sm.regions(seed.canvas_latent_mask, related, grid, params)
        u = sa.progress(extra, config, ms)
        dense = (reg.f @ reg.g.T) * sm.time_weight(u, 0.7, 1.0)  # the oracle's only factorization is f g^T
        b, n, inner = q.shape
        h = extra["n_heads"]
        d = inner // h
        qh, kh, vh = (t.view(b, n, h, d).transpose(1, 2) for t in (q, k, v))
        ref = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d) + dense, -1) @ vh
        ref = ref.transpose(1, 2).reshape(b, n, inner)
        assert torch.allclose(out, ref, atol=2e-5), layer.short
        plain = attention.default_attention(q, k, v, extra)
        assert not torch.allclose(out, plain, atol=1e-4)


def test_installs_on_every_self_attention_layer_and_leaves_model_alone(tiny_sdxl):
    seed = seed_obj()
    before = dict(tiny_sdxl.model.model_options.get("transformer_options", {}).get("patches_replace", {}))
    m = patched(tiny_sdxl.model, seed)
    slot = m.model_options["transformer_options"]["patches_replace"]["attn1"]
    assert set(slot) == {l.key for l in layers.attention_layers(tiny_sdxl.model)}
    assert tiny_sdxl.model.model_options.get("transformer_options", {}).get("patches_replace", {}) == before
    only = patched(tiny_sdxl.model, seed, layers="m0.0, o1.0")
    assert set(only.model_options["transformer_options"]["patches_replace"]["attn1"]) == {("middle", 0, 0),
                                                                                         ("output", 1, 0)}
    with pytest.raises(errors.ConduitError, match="names no self-attention layer"):
        patched(tiny_sdxl.model, seed, layers="i9.9")
    # one grammar with SEG: ranges and presets
    ranged = patched(tiny_sdxl.model, seed, layers="o0-2")
    assert set(ranged.model_options["transformer_options"]["patches_replace"]["attn1"]) == {
        ("output", i, 0) for i in range(3)}
    middle = patched(tiny_sdxl.model, seed, layers="middle")
    assert set(middle.model_options["transformer_options"]["patches_replace"]["attn1"]) == {("middle", 0, 0)}
    with pytest.raises(errors.ConduitError, match="not understood"):
        patched(tiny_sdxl.model, seed, layers="o" + "9" * 5000)


def test_chains_existing_replace_and_acts_only_in_cycles(tiny_sd15):
    """A replace installed first keeps running; it sees the extra head channels only inside COW cycles."""
    seen = []
    base = tiny_sd15.model.clone()

    def make(inner):
        def fn(q, k, v, extra):
            phase = extra.get("conduit_cow", {}).get("phase", "none")
            seen.append((phase, q.shape[-1] // extra["n_heads"], extra["dim_head"]))
            return inner(q, k, v, extra)
        return fn
    for layer in layers.attention_layers(base):
        attention.set_replace(base, "attn1", layer.key, make)
    seed = seed_obj()
    m = patched(base, seed)
    pos, neg = tiny_sd15.cond(seed=0), tiny_sd15.cond(seed=1)
    import comfy.sample

    sig = conduit_pack.patches.cow.sampler.model_sigmas(m, "ddim_uniform", 10)
    lx, ly, lw, lh = seed.box.latent
    crop = {"samples": torch.randn(1, 4, lh, lw, generator=torch.Generator().manual_seed(2))}
    canvas = torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(3))
    inv, _ = cow.ConduitCOWInvert().invert(m, pos, neg, sig, seed, "crop alone", 7.5, 0.7, crop_latent=crop)
    (sampler,) = cow.ConduitCOWCycleSampler().build(inv, 2, 0.7, 0.5, 1.0, 0.1, 0.4, "exact", 42)
    comfy.sample.sample_custom(m, torch.zeros_like(canvas), 7.5, sampler, sig, pos, neg, canvas, disable_pbar=True)
    phases = {p for p, _, _ in seen}
    assert phases == {"invert", "cycle", "final"}
    for phase, dim, declared in seen:
        if phase == "cycle":
            assert dim == 16 + 1 and declared == dim  # one bias channel (CPU: no padding)
        else:
            assert dim == 16 and declared == 16


def test_modulation_changes_sampling_and_zero_strength_does_not(tiny_sd15):
    seed = seed_obj()
    pos, neg = tiny_sd15.cond(seed=0), tiny_sd15.cond(seed=1)
    plain = testing.sample(tiny_sd15.model, pos, neg, latent_hw=(12, 16), steps=3)
    on = testing.sample(patched(tiny_sd15.model, seed), pos, neg, latent_hw=(12, 16), steps=3)
    off = testing.sample(patched(tiny_sd15.model, seed, suppress=0.0, enhance=0.0), pos, neg,
                         latent_hw=(12, 16), steps=3)
    gated = testing.sample(patched(tiny_sd15.model, seed, suppress=0.0, threshold=1e-6, gate="hard"), pos, neg,
                           latent_hw=(12, 16), steps=3)
    cut = testing.sample(patched(tiny_sd15.model, seed, time_cutoff=0.0, time_decay=0.0), pos, neg,
                         latent_hw=(12, 16), steps=3)
    assert not torch.allclose(plain, on, atol=1e-3)
    assert torch.equal(plain, off)  # strength 0 is bit-identical to vanilla
    assert torch.allclose(plain, gated, rtol=1e-4, atol=1e-3)  # the indicator says "already attended": no enhancement
    assert not torch.allclose(plain, cut, atol=1e-3)  # cutoff 0 still covers the first step (u = 0)
    again = testing.sample(patched(tiny_sd15.model, seed), pos, neg, latent_hw=(12, 16), steps=3)
    assert torch.equal(on, again)
    assert torch.equal(plain, testing.sample(tiny_sd15.model, pos, neg, latent_hw=(12, 16), steps=3))


def test_cond_only_leaves_uncond_rows(tiny_sd15):
    seed = seed_obj()
    pos, neg = tiny_sd15.cond(seed=0), tiny_sd15.cond(seed=1)
    key = layers.attention_layers(tiny_sd15.model)[0].key
    q, k, v, extra = capture_layer(tiny_sd15.model, pos, neg, key)
    config = sa.SowConfig(sm.SowParams(threshold=0.0), seed.canvas_latent_mask,
                          sm.box_mask(RELATED, (12, 16)), cond_only=True)
    out = sa.make_replace(config, compat.model_sampling(tiny_sd15.model))(attention.default_attention)(q, k, v, extra)
    plain = attention.default_attention(q, k, v, extra)
    rows_uncond = [i for i, c in enumerate(extra["cond_or_uncond"]) if c == 1]
    rows_cond = [i for i, c in enumerate(extra["cond_or_uncond"]) if c == 0]
    assert torch.allclose(out[rows_uncond], plain[rows_uncond], atol=1e-6)
    assert not torch.allclose(out[rows_cond], plain[rows_cond], atol=1e-4)
