"""Balanced Style on DiTs against an independent implementation of the official SD3.5-Large port's processor.

The oracle below is written from the port's SharedDynamicJointAttentionProcessor (diffusers token order:
image tokens, then the appended reference image tokens, then text), with its batch layout generalised: row i's
reference is `ref_of[i]` instead of the hard-coded rows 0 and b/2 with targets 1 and 3. Conduit runs on
ComfyUI's order (text first) with reference rows at the head of every cond/uncond chunk.
"""
import pytest
import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.conditional_balance.dit_style_math as dsm

EPS = 1e-5


def official_adain(feat, ref_of):
    """The port's adain(): per (row, head, channel) stats over tokens, unbiased var + 1e-5; references untouched."""
    feat = feat.clone()
    mean = feat.mean(dim=-2, keepdim=True)
    std = (feat.var(dim=-2, keepdim=True) + EPS).sqrt()
    for i, r in enumerate(ref_of):
        if r != i:
            feat[i] = (feat[i] - mean[i]) / std[i] * std[r] + mean[r]
    return feat


def official_expand_first(feat, ref_of, scale=1.0):
    """The port's expand_first(): each row's reference; copies for target rows scaled, the reference's not."""
    rows = [feat[r] * (scale if r != i else 1.0) for i, r in enumerate(ref_of)]
    return torch.stack(rows)


def official_processor(img, txt, ref_of, adain_q, adain_k, adain_v, scale=1.0):
    """img, txt: (q, k, v) each (batch, heads, tokens, size), after the q/k norms. Returns (image out, text out)."""
    q, k, v = img
    share = adain_k and adain_q  # the port overwrites share_attention with this
    if adain_q:
        q = official_adain(q, ref_of)
    if adain_k:
        k = official_adain(k, ref_of)
    if adain_v:
        v = official_adain(v, ref_of)
    if share:
        k = torch.cat((k, official_expand_first(k, ref_of, scale)), dim=-2)
        v = torch.cat((v, official_expand_first(v, ref_of)), dim=-2)
    n = q.shape[2]
    query, key, value = (torch.cat([a, b], dim=2) for a, b in zip((q, k, v), txt))
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value)
    return out[:, :, :n], out[:, :, n:]


def ref_rows(cond_or_uncond, per):
    return [(i // per) * per for i in range(len(cond_or_uncond) * per)]


def conduit_joint(img, txt, cond_or_uncond, adain_q, adain_k, adain_v, share, scale=1.0):
    t = txt[0].shape[2]
    n = img[0].shape[2]
    q, k, v = (torch.cat([b, a], dim=2) for a, b in zip(img, txt))  # ComfyUI: text tokens first
    q, k, v = dsm.styled_qkv(q, k, v, slice(t, t + n), cond_or_uncond, adain_q, adain_k, adain_v, share, scale)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out[:, :, t:], out[:, :, :t]


def rand(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + 0.3


@pytest.mark.parametrize("cond_or_uncond,targets", [([1, 0], 1), ([0, 1], 2), ([0], 3), ([1, 0, 2], 2)])
@pytest.mark.parametrize("flags", [(True, True, True), (True, True, False), (True, False, True), (False, True, False),
                                   (False, False, True)])
@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_equals_official_processor_with_fixed_batch_layout(cond_or_uncond, targets, flags, scale):
    per = targets + 1
    b, h, n, t, d = len(cond_or_uncond) * per, 2, 12, 5, 8
    img = tuple(rand((b, h, n, d), s) for s in (1, 2, 3))
    txt = tuple(rand((b, h, t, d), s) for s in (4, 5, 6))
    adain_q, adain_k, adain_v = flags
    want_img, want_txt = official_processor(img, txt, ref_rows(cond_or_uncond, per), adain_q, adain_k, adain_v,
                                            scale)
    got_img, got_txt = conduit_joint(img, txt, cond_or_uncond, adain_q, adain_k, adain_v, adain_q and adain_k,
                                     scale)
    torch.testing.assert_close(got_img, want_img, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_txt, want_txt, rtol=1e-10, atol=1e-10)


def test_official_four_row_layout_is_the_special_case():
    """The port's literal adain (targets 1 and 3, references 0 and b/2) equals Conduit's on [1, 0] with one target."""
    x = rand((4, 2, 10, 8), 9)
    literal = x.clone()
    mean = x.mean(dim=-2, keepdim=True)
    std = (x.var(dim=-2, keepdim=True) + EPS).sqrt()
    for tgt, ref in ((1, 0), (3, 2)):
        literal[tgt] = (x[tgt] - mean[tgt]) / std[tgt] * std[ref] + mean[ref]
    got = dsm.adain_image_tokens(x, slice(0, 10), [1, 0])
    torch.testing.assert_close(got, literal, rtol=1e-12, atol=1e-12)


def test_text_and_trailing_tokens_untouched_and_only_image_tokens_shared():
    b, h, t, n, extra, d = 4, 2, 3, 6, 2, 4
    q, k, v = (rand((b, h, t + n + extra, d), s) for s in (1, 2, 3))
    image = slice(t, t + n)
    q2, k2, v2 = dsm.styled_qkv(q, k, v, image, [0, 1], True, True, True, True, 0.5)
    for before, after in ((q, q2), (k, k2[:, :, :t + n + extra]), (v, v2[:, :, :t + n + extra])):
        assert torch.equal(after[:, :, :t], before[:, :, :t])
        assert torch.equal(after[:, :, t + n:t + n + extra], before[:, :, t + n:])
    assert not torch.equal(q2[1, :, image], q[1, :, image])
    assert torch.equal(q2[0], q[0]) and torch.equal(q2[2], q[2])  # references keep their own tokens
    # appended: the chunk reference's image keys, scaled for targets, unscaled for the reference itself
    assert k2.shape[2] == t + n + extra + n and v2.shape[2] == k2.shape[2]
    torch.testing.assert_close(k2[1, :, t + n + extra:], 0.5 * k[0, :, image])
    torch.testing.assert_close(k2[0, :, t + n + extra:], k[0, :, image])
    torch.testing.assert_close(v2[3, :, t + n + extra:], v[2, :, image])


def test_image_only_attention_has_no_text():
    q, k, v = (rand((2, 1, 9, 4), s) for s in (1, 2, 3))
    want, _ = official_processor((q, k, v), tuple(x[:, :, :0] for x in (q, k, v)), [0, 0], True, True, False)
    got, _ = conduit_joint((q, k, v), tuple(x[:, :, :0] for x in (q, k, v)), [0], True, True, False, True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_rows_must_hold_a_reference_and_a_target():
    q = rand((2, 1, 4, 4), 1)
    with pytest.raises(ValueError):
        dsm.styled_qkv(q, q, q, slice(0, 4), [0, 1], True, True, False, True)


def conduit_split(img, txt, cond_or_uncond, adain_q, adain_k, adain_v, scale=1.0):
    """What the node runs in a shared block: two attention calls, joined back in batch order."""
    t, n = txt[0].shape[2], img[0].shape[2]
    q, k, v = (torch.cat([b, a], dim=2) for a, b in zip(img, txt))
    refs, targets = dsm.split_shared(q, k, v, slice(t, t + n), cond_or_uncond, adain_q, adain_k, adain_v, scale)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    out = dsm.join_rows(sdpa(*refs), sdpa(*targets), len(cond_or_uncond))
    return out[:, :, t:], out[:, :, :t]


@pytest.mark.parametrize("cond_or_uncond,targets", [([1, 0], 1), ([0, 1], 2), ([0], 3), ([1, 0, 2], 2)])
@pytest.mark.parametrize("adain_v", [True, False])
def test_split_call_targets_equal_the_official_and_references_stay_plain(cond_or_uncond, targets, adain_v):
    per = targets + 1
    b, h, n, t, d = len(cond_or_uncond) * per, 2, 12, 5, 8
    img = tuple(rand((b, h, n, d), s) for s in (1, 2, 3))
    txt = tuple(rand((b, h, t, d), s) for s in (4, 5, 6))
    refs = ref_rows(cond_or_uncond, per)
    want_img, want_txt = official_processor(img, txt, refs, True, True, adain_v, 0.8)
    got_img, got_txt = conduit_split(img, txt, cond_or_uncond, True, True, adain_v, 0.8)
    is_target = torch.tensor([r != i for i, r in enumerate(refs)])
    torch.testing.assert_close(got_img[is_target], want_img[is_target], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_txt[is_target], want_txt[is_target], rtol=1e-10, atol=1e-10)
    # the reference rows: plain joint attention of their own tokens (the port doubles their image keys)
    q, k, v = (torch.cat([a, b], dim=2) for a, b in zip(img, txt))
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(got_img[~is_target], plain[~is_target, :, :n], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(want_img[~is_target], plain[~is_target, :, :n], atol=1e-6)
