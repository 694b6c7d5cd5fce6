"""Engine pieces against ComfyUI's real UNet and sampler: layers, steps, chunks, grids, chaining, run state."""
import pytest
import torch

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.engine.layers as layers
import conduit_pack.patches.engine.steps as steps
import conduit_pack.patches.engine.batch as batch
import conduit_pack.patches.engine.grid as grid
import conduit_pack.patches.engine.attention as attention
import conduit_pack.patches.engine.run_state as run_state
import conduit_pack.patches.engine.host as compat
import conduit_pack.patches.engine.errors as errors


def test_layer_keys_sd15_and_sdxl(tiny_sd15, tiny_sdxl):
    sd15 = [(l.key, l.downsample) for l in layers.attention_layers(tiny_sd15.model)]
    assert sd15 == [(("input", 1, 0), 1), (("input", 3, 0), 2), (("middle", 0, 0), 4), (("output", 2, 0), 2),
                    (("output", 3, 0), 2), (("output", 4, 0), 1), (("output", 5, 0), 1)]
    sdxl = [l.key for l in layers.attention_layers(tiny_sdxl.model)]
    assert sdxl == [("input", 5, 0), ("middle", 0, 0)] + [("output", i, 0) for i in range(6)]
    assert layers.model_family(tiny_sdxl.model, "t") == "sdxl"
    assert layers.model_family(tiny_sd15.model, "t") == "sd15"


def test_sd2_family_is_v_prediction_and_samples():
    import comfy.model_sampling

    tm = testing.tiny_model("sd2")
    assert layers.model_family(tm.model, "t") == "sd2"
    assert isinstance(compat.model_sampling(tm.model), comfy.model_sampling.V_PREDICTION)
    assert len(layers.attention_layers(tm.model)) == 7
    c = tm.cond()
    out = testing.sample(tm.model, c, c, steps=2)
    assert torch.isfinite(out).all()


def test_layer_keys_are_what_comfyui_reports_at_runtime(tiny_sdxl):
    """Record (block, block_index) and the token count at every attn1 call of a real sampling run."""
    seen = {}
    m = tiny_sdxl.model.clone()

    def record(n, context, value, extra):
        block = extra["block"]
        seen[(block[0], block[1], extra["block_index"])] = n.shape[1]
        return n, context, value

    m.set_model_attn1_patch(record)
    c = tiny_sdxl.cond()
    testing.sample(m, c, c, latent_hw=(40, 24), steps=1)
    declared = layers.attention_layers(tiny_sdxl.model)
    assert set(seen) == {l.key for l in declared}
    for l in declared:
        h, w = l.grid((40, 24))
        assert seen[l.key] == h * w


def test_unsupported_family_names_node_and_families(tiny_sdxl):
    fake = tiny_sdxl.model.clone()
    fake.model = torch.nn.Module()
    with pytest.raises(errors.ConduitError, match=r"\[My Node\].*SD1\.x, SD2\.x, SDXL"):
        layers.model_family(fake, "My Node")


def test_step_context_and_chunks_during_real_sampling(tiny_sdxl):
    calls = []
    m = tiny_sdxl.model.clone()
    ms = compat.model_sampling(m)

    def record(n, context, value, extra):
        if extra["block"] == ("middle", 0):
            ctx = steps.step_context(extra, ms)
            calls.append((ctx, list(extra["cond_or_uncond"]), n.shape[0]))
        return n, context, value

    m.set_model_attn1_patch(record)
    c = tiny_sdxl.cond(batch=3)
    testing.sample(m, c, tiny_sdxl.cond(batch=3, seed=1), batch=3, steps=5, cfg=4.0)
    assert len(calls) >= 5
    for ctx, cou, b in calls:
        assert sorted(cou) == [0, 1] and b == 6
        assert batch.rows_of(b, cou, 0).numel() == 3
        assert 0.0 <= ctx.percent <= 1.0
    percents = [c[0].percent for c in calls]
    assert percents == sorted(percents) and percents[0] < 0.05
    if calls[0][0].index is not None:  # hosts that expose sample_sigmas
        assert [c[0].index for c in calls] == list(range(5))
        assert calls[0][0].steps == 5


def test_percent_round_trip_through_model_sampling(tiny_sdxl):
    ms = compat.model_sampling(tiny_sdxl.model)
    for p in (0.05, 0.3, 0.5, 0.8):
        assert steps.sigma_to_percent(ms, steps.percent_to_sigma(ms, p)) == pytest.approx(p, abs=2e-3)


@pytest.mark.parametrize("hw", [(36, 20), (25, 17), (20, 46)])
def test_any_aspect_ratio_samples(tiny_sdxl, hw):
    """Odd and non-square latents: grids recovered inside a replace match the real feature maps."""
    checked = []
    m = tiny_sdxl.model.clone()

    def make(inner):
        def fn(q, k, v, extra):
            shape = extra["original_shape"]
            h, w = grid.token_grid((shape[2], shape[3]), q.shape[1])
            assert grid.tokens_to_grid(q, (h, w)).shape[-2:] == (h, w)
            checked.append((h, w))
            return inner(q, k, v, extra)
        return fn

    for l in layers.attention_layers(m):
        attention.set_replace(m, "attn1", l.key, make)
    c = tiny_sdxl.cond()
    testing.sample(m, c, c, latent_hw=hw, steps=1)
    assert checked


def test_replace_chains_to_another_packs_function(tiny_sdxl):
    foreign_calls = []
    ours = []
    m = tiny_sdxl.model.clone()

    def foreign(q, k, v, extra):
        foreign_calls.append(1)
        return attention.default_attention(q, k, v, extra)

    m.set_model_attn1_replace(foreign, "middle", 0, 0)

    def make(inner):
        def fn(q, k, v, extra):
            ours.append(1)
            return inner(q, k, v, extra)
        return fn

    m2 = m.clone()
    attention.set_replace(m2, "attn1", ("middle", 0, 0), make)
    c = tiny_sdxl.cond()
    testing.sample(m2, c, c, steps=2)
    assert ours and len(foreign_calls) == len(ours)
    assert m.model_options["transformer_options"]["patches_replace"]["attn1"][("middle", 0, 0)] is foreign


def test_two_tuple_fallback_key_is_chained_too(tiny_sdxl):
    m = tiny_sdxl.model.clone()
    marker = object()
    m.set_model_attn1_replace(marker, "middle", 0)
    assert attention.existing_replace(m.model_options, "attn1", ("middle", 0, 0)) is marker


def test_noop_replace_is_bit_identical_and_original_untouched(tiny_sdxl):
    c = tiny_sdxl.cond()
    before = dict(tiny_sdxl.model.model_options["transformer_options"])
    ref = testing.sample(tiny_sdxl.model, c, c, steps=3)
    m = tiny_sdxl.model.clone()
    for l in layers.attention_layers(m):
        attention.set_replace(m, "attn1", l.key, lambda inner: inner)
    out = testing.sample(m, c, c, steps=3)
    assert torch.equal(out, ref)
    assert tiny_sdxl.model.model_options["transformer_options"] == before
    assert torch.equal(testing.sample(tiny_sdxl.model, c, c, steps=3), ref)


def test_run_state_resets_at_every_run(tiny_sdxl):
    state = run_state.RunState(list)
    m = tiny_sdxl.model.clone()
    run_state.attach_run_reset(m, "conduit_test", state)
    lengths = []

    def record(n, context, value, extra):
        if extra["block"] == ("middle", 0):
            s = state.at(steps.current_sigma(extra))
            s.append(1)
            lengths.append(len(s))
        return n, context, value

    m.set_model_attn1_patch(record)
    c = tiny_sdxl.cond()
    testing.sample(m, c, c, steps=3)
    first = list(lengths)
    lengths.clear()
    testing.sample(m, c, c, steps=3)
    assert lengths == first and first[0] == 1
