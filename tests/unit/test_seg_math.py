"""SEG query blur and guidance math against independent oracles (no ComfyUI)."""
import math

import pytest
import torch
import torch.nn.functional as F

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.seg.seg_math as sm
import conduit_pack.patches.engine.layer_select as sl
import conduit_pack.patches.engine.layers as layers_mod
import conduit_pack.patches.engine.errors as errors


def official_taps(k: int, sigma: float) -> torch.Tensor:
    half = (k - 1) * 0.5
    x = torch.linspace(-half, half, steps=k, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma).pow(2))
    return g / g.sum()


def oracle_blur(grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """Dense 2-D depthwise Gaussian conv with reflect padding, kernel = outer product of the per-axis taps.

    Kernel size per axis: smallest odd >= ceil(6 sigma), capped at the side (odd) or side + 1 (even).
    """
    b, c, h, w = grid.shape
    k0 = math.ceil(6 * sigma)
    k0 = k0 + 1 if k0 % 2 == 0 else k0
    kh = min(k0, h if h % 2 else h + 1)
    kw = min(k0, w if w % 2 else w + 1)
    kernel = torch.outer(official_taps(kh, sigma), official_taps(kw, sigma))
    weight = kernel.expand(c, 1, kh, kw)
    padded = F.pad(grid.double(), (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
    return F.conv2d(padded, weight, groups=c)


@pytest.mark.parametrize("hw", [(8, 8), (5, 5), (6, 10), (10, 6), (7, 12), (20, 48), (32, 64), (3, 17), (2, 9)])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0, 5.0, 10.0, 100.0])
def test_blur_equals_dense_reflect_conv(hw, sigma):
    g = torch.Generator().manual_seed(hash(hw) % 1000)
    grid = torch.randn(2, 3, *hw, generator=g, dtype=torch.float64)
    got = sm.blur_grid(grid, sigma)
    assert torch.allclose(got, oracle_blur(grid, sigma), atol=1e-12, rtol=0)


def test_blur_tokens_is_the_grid_blur_in_token_layout():
    q = torch.randn(2, 6 * 10, 5, dtype=torch.float64)
    grid = q.transpose(1, 2).reshape(2, 5, 6, 10)
    want = oracle_blur(grid, 1.5).reshape(2, 5, 60).transpose(1, 2)
    assert torch.allclose(sm.blur_tokens(q, (6, 10), 1.5), want, atol=1e-12)
    with pytest.raises(ValueError, match="grid"):
        sm.blur_tokens(q, (7, 10), 1.5)


@pytest.mark.parametrize("latent_px,sigmas", [((1536, 640), (7.0, 10.0, 20.0, 100.0)),
                                             ((2048, 1024), (11.0, 20.0, 100.0))])
def test_wide_sdxl_mid_grids_with_large_sigma(latent_px, sigmas):
    """The anchors' last-axis clamp crashes here (pad >= short side); the per-axis cap does not."""
    w, h = latent_px[0] // 8 // 4, latent_px[1] // 8 // 4  # SDXL mid block: latent / 4
    q = torch.randn(1, h * w, 4, dtype=torch.float64)
    for s in sigmas:
        k_last = min(sm.kernel_size(s), w if w % 2 else w + 1)
        with pytest.raises(RuntimeError):  # what a last-axis clamp would do
            F.pad(torch.zeros(1, 1, h, w), (k_last // 2,) * 4, mode="reflect")
        out = sm.blur_tokens(q, (h, w), s)
        assert torch.isfinite(out).all()
        grid = q.transpose(1, 2).reshape(1, 4, h, w)
        assert torch.allclose(out.transpose(1, 2).reshape(1, 4, h, w), oracle_blur(grid, s), atol=1e-12)


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (7, 1), (2, 2), (1, 2), (2, 5)])
def test_tiny_grids_blur_only_axes_with_room(hw):
    """A 1-wide axis gets a single tap (left as it is); a 2-wide axis a 3-tap reflect blur."""
    q = torch.randn(1, hw[0] * hw[1], 3, dtype=torch.float64)
    out = sm.blur_tokens(q, hw, 50.0)
    grid = q.transpose(1, 2).reshape(1, 3, *hw)
    assert torch.allclose(out.transpose(1, 2).reshape(1, 3, *hw), oracle_blur(grid, 50.0), atol=1e-12)
    if hw == (1, 1):
        assert torch.equal(out, q)
    if hw[0] == 1:
        row = (sm.blur_matrix(hw[1], 50.0) @ grid[0, :, 0, :].T).T
        assert torch.allclose(out[0].T, row, atol=1e-12)


def test_kernel_size_rule_and_per_axis_cap():
    assert [sm.kernel_size(s) for s in (0.0, 0.1, 0.5, 1.0, 1.1, 2.0, 10.0, 100.0)] == [1, 1, 3, 7, 7, 13, 61, 601]
    assert sm.axis_kernel_size(10.0, 8) == 9 and sm.axis_kernel_size(10.0, 9) == 9
    assert sm.axis_kernel_size(1.0, 64) == 7 and sm.axis_kernel_size(100.0, 1) == 1
    for side in range(1, 40):  # reflect padding always has room
        assert sm.axis_kernel_size(1e3, side) // 2 < side


@pytest.mark.parametrize("hw", [(3, 4), (1, 5), (8, 8), (2, 9)])
def test_sigma_zero_is_the_small_sigma_limit_not_nan(hw):
    """sigma = 0 is the identity, the limit of the dense Gaussian blur as sigma -> 0+ (the recipe's own taps
    at sigma = 0 would be exp(-0.5 * (0 / 0)^2) = NaN)."""
    q = torch.randn(2, hw[0] * hw[1], 4, dtype=torch.float64)
    grid = q.transpose(1, 2).reshape(2, 4, *hw)
    for tiny in (1e-3, 1e-9):  # the oracle's limit: one tap per axis, i.e. the input itself
        assert torch.equal(oracle_blur(grid, tiny), grid)
        assert torch.equal(sm.blur_tokens(q, hw, tiny), q)
    out = sm.blur_tokens(q, hw, 0.0)
    assert torch.isfinite(out).all() and torch.equal(out, q)
    assert torch.equal(sm.blur_grid(grid, 0.0), grid)
    for side in set(hw):
        m = sm.blur_matrix(side, 0.0)
        assert torch.isfinite(m).all() and torch.equal(m, torch.eye(side, dtype=torch.float64))
    half = q.half()
    assert torch.equal(sm.blur_tokens(half, hw, 0.0), half)


@pytest.mark.parametrize("sigma", [-1.0, -0.5, math.inf, 10000.0, 1e9])
def test_infinite_sigma_is_the_spatial_mean(sigma):
    q = torch.randn(2, 20, 6)
    out = sm.blur_tokens(q, (4, 5), sigma)
    assert torch.allclose(out, q.mean(dim=1, keepdim=True).expand_as(q))
    assert sm.is_infinite(sigma)
    assert torch.equal(sm.mean_query(q), q.mean(dim=1, keepdim=True))


def test_large_finite_sigma_approaches_but_is_not_the_mean():
    q = torch.randn(1, 64, 3, dtype=torch.float64)
    big = sm.blur_tokens(q, (8, 8), 9999.0)
    mean = q.mean(dim=1, keepdim=True).expand_as(q)
    assert not sm.is_infinite(9999.0)
    assert 0 < (big - mean).abs().max() < (sm.blur_tokens(q, (8, 8), 1.0) - mean).abs().max()


def test_blur_matrix_rows_sum_to_one():
    m = sm.blur_matrix(9, 2.0)
    assert torch.allclose(m.sum(dim=1), torch.ones(9, dtype=torch.float64))


def test_cached_matrix_follows_dtype_and_device():
    m = sm.cached_blur_matrix(6, 1.0, torch.float16, torch.device("cpu"))
    assert m.dtype == torch.float16 and m is sm.cached_blur_matrix(6, 1.0, torch.float16, torch.device("cpu"))


def test_guidance_combination_and_cfg1():
    uncond, cond, blurred = torch.randn(3, 2, 4, 5, 5).unbind(0)
    cfg, scale = 5.0, 3.0
    denoised = uncond + cfg * (cond - uncond)
    got = sm.guide(denoised, cond, blurred, scale)
    assert torch.allclose(got, uncond + cfg * (cond - uncond) + scale * (cond - blurred))
    assert torch.allclose(sm.guide(cond, cond, blurred, scale), cond + scale * (cond - blurred))
    assert torch.equal(sm.guide(denoised, cond, blurred, 0.0), denoised)


def test_rescale_matches_lin_et_al_in_noise_space():
    x, cond, guided = torch.randn(3, 2, 4, 6, 6, dtype=torch.float64).unbind(0)
    sigma = 3.7
    eps_c, eps_g = (x - cond) / sigma, (x - guided) / sigma
    std = lambda e: e.std(dim=(1, 2, 3), keepdim=True)  # noqa: E731
    for phi in (0.3, 0.7, 1.0):
        eps = phi * eps_g * std(eps_c) / std(eps_g) + (1 - phi) * eps_g
        assert torch.allclose(sm.rescale(x, cond, guided, phi), x - sigma * eps, atol=1e-12)
    assert sm.rescale(x, cond, guided, 0.0) is guided
    full = sm.rescale(x, cond, guided, 1.0)
    assert torch.allclose(std(x - full), std(x - cond))


def fake_layers():
    L = layers_mod.AttentionLayer
    out = [L("input", 4, 0, 0, 2, 1, 1, True), L("input", 4, 1, 1, 2, 1, 1, True),
           L("input", 5, 0, 2, 2, 1, 1, True), L("middle", 0, 0, 3, 4, 1, 1, True),
           L("middle", 0, 1, 4, 4, 1, 1, True)]
    out += [L("output", i, d, 5 + 2 * i + d, 4, 1, 1, True) for i in range(3) for d in range(2)]
    return out


def test_layer_presets_and_custom_lists():
    ls = fake_layers()
    assert [l.short for l in sl.select_layers(ls, "middle", "", "N")] == ["m0.0", "m0.1"]
    assert len(sl.select_layers(ls, "all", "", "N")) == len(ls)
    assert [l.short for l in sl.select_layers(ls, "custom", "m0, o1.1 ,i4-5", "N")] == \
        ["i4.0", "i4.1", "i5.0", "m0.0", "m0.1", "o1.1"]
    assert [l.short for l in sl.select_layers(ls, "custom", "o0-2.1", "N")] == ["o0.1", "o1.1", "o2.1"]
    assert [l.short for l in sl.select_layers(ls, "custom", "u0.0-1,d5", "N")] == ["i5.0", "o0.0", "o0.1"]


@pytest.mark.parametrize("text,bad", [("m0,x1", "x1"), ("o1..2", "o1..2"), ("middle", "middle"), ("o3", "o3"),
                                      ("i5-4", "i5-4"), ("m0.7", "m0.7"), ("o1,", None), (" , ", None)])
def test_layer_list_errors_name_the_bad_token(text, bad):
    ls = fake_layers()
    if bad is None and text.strip(" ,") == "":
        with pytest.raises(errors.ConduitError, match="empty"):
            sl.select_layers(ls, "custom", text, "My Node")
        return
    if bad is None:
        assert [l.short for l in sl.select_layers(ls, "custom", text, "N")] == ["o1.0", "o1.1"]
        return
    with pytest.raises(errors.ConduitError, match=rf"\[My Node\].*'{bad}'") as e:
        sl.select_layers(ls, "custom", text, "My Node")
    assert "Fix:" in str(e.value)


def test_custom_text_without_custom_preset_is_an_error():
    with pytest.raises(errors.ConduitError, match="custom_layers"):
        sl.select_layers(fake_layers(), "middle", "o1", "N")
