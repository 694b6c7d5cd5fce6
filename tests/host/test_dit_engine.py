"""The joint-attention engine on tiny SD3 and Flux: what an op sees, and chaining with other packs' hooks."""
import pytest
import torch

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack)

from conduit_pack.toyworld import dit_build

OK, WHY = dit_build.dit_available()
pytestmark = pytest.mark.skipif(not OK, reason=f"DiT tests need SD3/Flux classes: {WHY}")

if OK:
    import conduit_pack.patches.engine.dit_attention as dit_attention

TOKENS = 8


def run(model, name, latent_hw=(10, 14), steps=2):
    import comfy.sample

    cfg = 1.0 if name == "flux" else 4.0
    pos = dit_build.dit_conditioning(name, 1, seed=10, tokens=TOKENS)
    neg = dit_build.dit_conditioning(name, 1, seed=11, tokens=TOKENS)
    latent = torch.zeros(1, dit_build.LATENT_CHANNELS, *latent_hw)
    return comfy.sample.sample(model, testing.noise_for(tuple(latent.shape)), steps, cfg, "euler", "simple",
                               pos, neg, latent, seed=0, disable_pbar=True)


@pytest.fixture(scope="module", params=["flux", "sd3"])
def tiny(request):
    return request.param, dit_build.build_dit(request.param, seed=2)


def plain_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v per head, (b, h, n, d) -> (b, n, h*d), in float64."""
    w = torch.softmax(q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    out = w @ v.double()
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1).to(q.dtype)


def test_an_op_sees_the_layout_and_attend_is_plain_attention(tiny):
    name, base = tiny
    seen = []

    def op(call):
        out = call.attend(call.q, call.k, call.v)
        seen.append((call.key, call.text, call.grid, tuple(call.q.shape),
                     float((out - plain_attention(call.q, call.k, call.v)).abs().max())))
        return out

    m = base.clone()
    dit_attention.set_block_op(m, ("double_block", 1), op, "probe")
    assert torch.equal(run(m, name), run(base, name))  # an op that only attends changes nothing
    assert seen and {s[0] for s in seen} == {("double_block", 1)}
    heads = 2
    for _key, text, grid, shape, err in seen:
        assert text == TOKENS and grid == (5, 7)  # latent 10x14, patch 2
        assert shape[1] == heads and shape[2] == TOKENS + 35
        assert err < 1e-4


def test_a_block_replace_of_another_pack_before_or_after_keeps_running(tiny):
    name, base = tiny
    calls = {"ours": 0, "theirs": 0}

    def op(call):
        calls["ours"] += 1
        return call.attend(call.q, call.k, call.v) * 0.5

    def theirs(args, extra):
        calls["theirs"] += 1
        out = extra["original_block"](args)
        return {k: v * 1.01 for k, v in out.items()}

    def both(order):
        calls.update(ours=0, theirs=0)
        m = base.clone()
        if order == "theirs_first":
            m.set_model_patch_replace(theirs, "dit", "double_block", 0)
            dit_attention.set_block_op(m, ("double_block", 0), op, "scale")
        else:
            dit_attention.set_block_op(m, ("double_block", 0), op, "scale")
            m.set_model_patch_replace(theirs, "dit", "double_block", 0)  # overwrites Conduit's slot
        return run(m, name)

    a = both("theirs_first")
    assert calls["ours"] > 0 and calls["theirs"] > 0
    b = both("theirs_after")
    assert calls["ours"] > 0 and calls["theirs"] > 0  # re-chained at call time
    assert torch.allclose(a, b, atol=1e-5)  # the same two changes either way
    only_theirs = base.clone()
    only_theirs.set_model_patch_replace(theirs, "dit", "double_block", 0)
    assert not torch.allclose(a, run(only_theirs, name))


def test_the_input_model_is_unchanged(tiny):
    name, base = tiny
    before = repr(base.model_options)
    m = base.clone()
    dit_attention.set_block_op(m, ("double_block", 0), lambda call: call.attend(call.q, call.k, call.v), "t")
    assert repr(base.model_options) == before
    assert "dit" not in base.model_options.get("transformer_options", {}).get("patches_replace", {})
