"""Abs-Grad-SAM pure math and word rules, checked against scipy.ndimage and hand-worked cases."""
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.gradsam.gradsam_math as gm
import conduit_pack.patches.gradsam.words as words


@pytest.mark.parametrize("shape", [(1, 1, 16, 16), (2, 3, 9, 14), (1, 2, 5, 31)])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5, 6.0])
def test_gaussian_blur_equals_scipy_nearest(shape, sigma):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = gm.gaussian_blur(x, sigma)
    for b in range(shape[0]):
        for c in range(shape[1]):
            ref = ndi.gaussian_filter(x[b, c].numpy(), sigma, mode="nearest", truncate=4.0)
            np.testing.assert_allclose(ours[b, c].numpy(), ref, rtol=1e-12, atol=1e-12)


def test_gaussian_blur_float32_and_off():
    x = torch.rand(1, 1, 12, 10, generator=torch.Generator().manual_seed(1))
    ref = ndi.gaussian_filter(x[0, 0].double().numpy(), 1.5, mode="nearest")
    np.testing.assert_allclose(gm.gaussian_blur(x, 1.5)[0, 0].numpy(), ref, atol=1e-6)
    assert gm.gaussian_blur(x, 1.5).dtype == torch.float32
    assert torch.equal(gm.gaussian_blur(x, 0.0), x)


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
def test_binary_dilation_equals_scipy(connectivity, iterations):
    gen = torch.Generator().manual_seed(iterations * 10 + connectivity)
    m = torch.rand(2, 2, 13, 17, generator=gen) > 0.93
    m[0, 0, 0, 0] = True  # a seed on the border: scipy's border_value=0 must not leak
    m[1, 1, -1, 5] = True
    ours = gm.binary_dilation(m, iterations, connectivity)
    structure = ndi.generate_binary_structure(2, connectivity)
    for b in range(2):
        for c in range(2):
            ref = ndi.binary_dilation(m[b, c].numpy(), structure=structure, iterations=iterations)
            assert np.array_equal(ours[b, c].numpy(), ref)


def test_binary_dilation_zero_iterations_is_identity():
    m = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(0)) > 0.8
    assert torch.equal(gm.binary_dilation(m, 0), m)


def test_threshold_per_channel_and_over_all():
    s = torch.zeros(1, 2, 2, 2)
    s[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    s[0, 1] = torch.tensor([[10.0, 10.0], [10.0, 40.0]])
    per = gm.threshold(s, 0.5, per_channel=True)
    t0 = 1.5 + 0.5 * float(torch.tensor([0.0, 1, 2, 3]).std())
    assert per[0, 0].flatten().tolist() == [v > t0 for v in [0.0, 1, 2, 3]]
    assert per[0, 1].flatten().tolist() == [False, False, False, True]
    joint = gm.threshold(s, 0.5, per_channel=False)
    flat = s.flatten()
    t = float(flat.mean() + 0.5 * flat.std())
    assert joint.flatten().tolist() == [bool(v > t) for v in flat]
    assert not joint[0, 0].any()  # the weak subject loses everything under a joint threshold


def test_subject_mask_is_blur_then_threshold_then_dilation():
    s = torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(5))
    blurred = ndi.gaussian_filter(s[0, 0].double().numpy(), 1.0, mode="nearest")
    thr = blurred > blurred.mean() + 0.5 * blurred.std(ddof=1)
    ref = ndi.binary_dilation(thr, structure=np.ones((3, 3), bool), iterations=2)
    ours = gm.subject_mask(s.double(), 0.5, True, 1.0, 2)
    assert np.array_equal(ours[0, 0].numpy(), ref)


def test_flat_items_flags_maps_without_signal():
    s = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    s[1] = 0.0
    s[2, 0] = 5.0
    assert gm.flat_items(s).tolist() == [False, True, False]


def test_importance_modes_and_token_sum():
    a = torch.tensor([[[[0.2, 0.3], [0.5, 0.1]]]])  # [B=1, heads=1, N=2, S=2]
    g = torch.tensor([[[[-1.0, 2.0], [0.5, -4.0]]]])
    assert gm.token_importance(a, g, "abs").tolist() == [[pytest.approx(0.2 + 0.6), pytest.approx(0.25 + 0.4)]]
    assert gm.token_importance(a, g, "gradsam").tolist() == [[pytest.approx(0.6), pytest.approx(0.25)]]
    with pytest.raises(ValueError):
        gm.token_importance(a, g, "nope")
    with pytest.raises(ValueError):
        gm.token_importance(a, g[..., :1], "abs")


def test_replace_is_exact_inside_and_outside():
    x = torch.randn(2, 4, 6, 5)
    ref = torch.randn(1, 4, 6, 5)
    noise = torch.randn(2, 4, 6, 5)
    keep = torch.rand(2, 1, 6, 5) > 0.5
    noised = gm.noised_reference(ref, noise, 3.25)
    out = gm.replace_background(x, noised, keep)
    k = keep.expand_as(x)
    assert torch.equal(out[k], x[k])
    assert torch.equal(out[~k], (ref + 3.25 * noise)[~k])


def test_manipulation_indices_pick_first_step_at_or_below_target():
    s = [14.6, 7.0, 4.0, 2.0, 1.0, 0.5, 0.0]
    assert gm.manipulation_indices(s, [5.0, 1.0, 0.9]) == [2, 4, 5]
    assert gm.manipulation_indices(s, [20.0, 14.6, 0.1]) == []  # before the start, at the start, past the end
    assert gm.manipulation_indices(s, [6.0, 5.0]) == [2]  # duplicates collapse
    assert gm.manipulation_indices([3.0, 0.0], [1.0]) == []


def test_default_percents_are_the_reference_timesteps():
    for p, t in zip(gm.DEFAULT_PERCENTS, (780, 520, 320)):
        assert abs((1 - p) * 999 - t) < 1.0


def test_parse_percents():
    assert gm.parse_percents("0.68, 0.219;0.479, ,0.219") == [0.219, 0.479, 0.68]
    assert gm.parse_percents("") == []
    for bad in ("0", "1.0", "-0.1", "x", "nan"):
        with pytest.raises(ValueError):
            gm.parse_percents(bad)


def test_periodic_positions_follow_context_repeats():
    assert gm.periodic_positions([5, 80], 154, 154) == [5, 80]
    assert gm.periodic_positions([5], 77, 154) == [5, 82]
    assert gm.periodic_positions([5, 80], 154, 77) == [5]  # not a multiple: keep what fits


def test_upsample_and_aggregate():
    tok = torch.arange(4.0).reshape(1, 4)
    up = gm.upsample_map(tok, (2, 2), (4, 4))
    ref = torch.nn.functional.interpolate(tok.reshape(1, 1, 2, 2), size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.equal(up, ref)
    a, b = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 100.0)
    b[0, 0, 0, 0] = 0.0
    agg = gm.aggregate_maps([a, b])
    assert torch.allclose(agg, (a / a.mean() + b / b.mean()) / 2)
    assert gm.aggregate_maps([b]) is b


def test_resize_latent_and_normalize():
    lat = torch.randn(1, 4, 8, 6)
    assert gm.resize_latent(lat, (8, 6)) is lat
    assert gm.resize_latent(lat, (16, 12)).shape == (1, 4, 16, 12)
    n = gm.normalize_map(torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]]]))
    assert n.flatten().tolist() == [0.0, 0.25, 0.5, 1.0]


def test_words_normalize_split_and_find():
    assert words.normalize("Cat,") == "cat" and words.normalize("(dog)") == "dog"
    assert words.normalize("x-ray!") == "x-ray"
    assert words.split_subject(" Red car , dog;; ") == [["red", "car"], ["dog"]]
    prompt = ["a", "cat", "and", "a", "red", "car", "and", "another", "cat"]
    assert words.find_phrase(prompt, ["cat"]) == [1, 8]
    assert words.find_phrase(prompt, ["red", "car"]) == [4, 5]
    assert words.find_phrase(prompt, ["blue", "car"]) == []


def test_noun_rule():
    prompt = "a photo of a deer roaming in the misty forest next to an old building , 8k".split()
    nouns = [prompt[i] for i in words.guess_nouns(prompt)]
    assert nouns == ["deer", "forest", "building"]
    assert words.guess_nouns(["quickly", "walking", "beautiful", "the", "42"]) == []
