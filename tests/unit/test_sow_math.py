"""SOW attention modulation: factorized bias vs a dense oracle built point by point from the design equations."""
import math

import pytest
import torch

from conduit.pack import pack_module

sm = pack_module("patches.sow_math")


def plain_attention(q, k, v, d):
    """Reference scaled-dot-product attention on [B, N, H*d] with scale 1/sqrt(d)."""
    b, n, inner = q.shape
    h = inner // d
    qh, kh, vh = (t.view(b, t.shape[1], h, d).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), -1)
    return (w @ vh).transpose(1, 2).reshape(b, n, inner)


def dense_oracle_bias(cond_mask, related_mask, grid, params, w_t=1.0, g=1.0):
    """The design's B[q, k], looping over every (query, key) cell of the grid."""
    h, w = grid
    ch, cw = cond_mask.shape
    side = max(h, w)

    def frac(mask, y, x):  # area of grid cell (y, x) covered by the mask (grids divide the mask evenly here)
        sy, sx = mask.shape[0] // h, mask.shape[1] // w
        return float(mask[y * sy:(y + 1) * sy, x * sx:(x + 1) * sx].mean())

    cells = [(y, x) for y in range(h) for x in range(w)]
    c = [frac(cond_mask, y, x) for y, x in cells]
    r = [frac(related_mask, y, x) * (1 - ci) for (y, x), ci in zip(cells, c)]
    tot = sum(c)
    cy = sum(ci * (y + 0.5) / side for (y, x), ci in zip(cells, c)) / tot
    cx = sum(ci * (x + 0.5) / side for (y, x), ci in zip(cells, c)) / tot
    n = len(cells)
    bias = torch.zeros(n, n, dtype=torch.float64)
    for i, (y, x) in enumerate(cells):
        dist = math.hypot((y + 0.5) / side - cy, (x + 0.5) / side - cx)
        wd = math.exp(-dist / params.distance_tau)
        for j in range(n):
            suppress = -params.suppress * c[i] * (1 - c[j])
            enhance = params.enhance * wd * r[i] * c[j]
            bias[i, j] = w_t * g * (suppress + enhance)
    return bias


def masks(hw=(8, 12)):
    cond = torch.zeros(hw)
    cond[0:4, 4:8] = 1.0
    cond[1, 4] = 0.0  # a keep-mask hole
    related = sm.box_mask({"x": 2 / 12, "y": 2 / 8, "w": 8 / 12, "h": 6 / 8}, hw)
    return cond, related


@pytest.mark.parametrize("grid", [(8, 12), (4, 6), (2, 3)])
def test_factorized_bias_equals_dense_oracle(grid):
    params = sm.SowParams(suppress=1.7, enhance=0.9, distance_tau=0.3)
    cond, related = masks()
    reg = sm.regions(cond, related, grid, params)
    dense = dense_oracle_bias(cond, related, grid, params)
    assert reg.f.shape == (grid[0] * grid[1], 1)  # rank 1
    diff = (reg.f @ reg.g.T).double() - dense
    # equal up to a per-query constant, which softmax ignores (test_augmented_attention checks the outputs)
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-5)
    assert dense.abs().max() > 0.5  # both terms present
    assert (dense > 0).any() and (dense < 0).any()


def test_augmented_attention_equals_dense_softmax_with_bias():
    torch.manual_seed(0)
    grid, heads, d, b = (4, 6), 3, 16, 2
    params = sm.SowParams(suppress=2.5, enhance=1.5, distance_tau=0.4)
    cond, related = masks()
    reg = sm.regions(cond, related, grid, params)
    n = grid[0] * grid[1]
    q, k, v = (torch.randn(b, n, heads * d, dtype=torch.float64) for _ in range(3))
    scale = torch.tensor([0.7, 0.0], dtype=torch.float64)  # row 2 unmodulated
    f = reg.f.double()[None] * scale[:, None, None]
    g = reg.g.double()[None].expand(b, -1, -1)
    ours = sm.augmented_attention(q, k, v, heads, f, g, plain_attention)
    dense = dense_oracle_bias(cond, related, grid, params)
    qh, kh, vh = (t.view(b, n, heads, d).transpose(1, 2) for t in (q, k, v))
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(d) + scale[:, None, None, None] * dense
    ref = (torch.softmax(logits, -1) @ vh).transpose(1, 2).reshape(b, n, heads * d)
    assert torch.allclose(ours, ref, atol=1e-6)  # regions are float32
    assert torch.allclose(ours[1], plain_attention(q, k, v, d)[1], atol=1e-12)
    assert not torch.allclose(ours[0], plain_attention(q, k, v, d)[0], atol=1e-3)


def test_augmentation_memory_is_linear_in_tokens():
    """At 64x64 the extra tensors are q/k/v copies (N * (d + 8) per head on CUDA), far below one N x N score
    matrix; on CPU one channel is added."""
    n, heads, d = 64 * 64, 10, 64
    extra = 3 * n * heads * (d + sm.CUDA_PAD)
    scores = heads * n * n
    assert extra < scores / 15
    captured = {}

    def spy(q2, k2, v2, d2):
        captured["shape"] = (q2.shape, d2)
        return plain_attention(q2, k2, v2, d2)
    q = torch.randn(1, 36, 2 * 8)
    reg = sm.regions(*masks(), (6, 6), sm.SowParams())
    sm.augmented_attention(q, q, q, 2, reg.f[None], reg.g[None], spy)
    assert captured["shape"] == (torch.Size([1, 36, 2 * 9]), 9)


def test_decays_gate_and_indicator():
    assert sm.time_weight(0.0, 1.0, 1.0) == 1.0
    assert sm.time_weight(0.5, 2.0, 1.0) == pytest.approx(math.exp(-1.0))
    assert sm.time_weight(0.6, 2.0, 0.5) == 0.0
    v = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert sm.gate(v, 2.0, "soft").tolist() == [1.0, 0.5, 0.0, 0.0]
    assert sm.gate(v, 2.0, "hard").tolist() == [1.0, 1.0, 0.0, 0.0]
    assert sm.gate(v, 0.0, "soft").tolist() == [1.0] * 4
    # indicator: keys that all look like the query's direction on condition cells -> far above uniform
    grid = (4, 4)
    cond = torch.zeros(4, 4)
    cond[:2, :2] = 1
    related = torch.zeros(4, 4)
    related[2:, :] = 1
    reg = sm.regions(cond, related, grid, sm.SowParams())
    assert reg.near.numel() == 2  # one fifth of 8 related cells, rounded up
    near_cells = sorted(reg.near.tolist())
    assert near_cells == [8, 9]  # row 2, columns 0-1: closest to the condition centre
    q = torch.zeros(1, 16, 4)
    q[..., 0] = 5.0
    k = torch.zeros(1, 16, 4)
    k[0, reg.cond > 0, 0] = 5.0
    share = sm.indicator(q, k, 1, reg.near, reg.cond)
    assert float(share) > 3.0  # 4 of 16 tokens: uniform share is 1, attention almost all on them
    uniform = sm.indicator(torch.zeros(1, 16, 4), k, 1, reg.near, reg.cond)
    assert float(uniform) == pytest.approx(1.0)


def test_box_mask_area_is_exact():
    m = sm.box_mask({"x": 0.1, "y": 0.25, "w": 0.5, "h": 0.5}, (8, 10))
    assert float(m.sum()) == pytest.approx(0.5 * 0.5 * 80)
    assert float(sm.to_grid(m, (4, 5)).sum() * 4) == pytest.approx(20.0, rel=1e-5)
    odd = sm.to_grid(m, (3, 7))  # ceil-halved grids of odd latents: overlapping cells, still 0..1
    assert odd.min() >= 0 and odd.max() <= 1 and odd.numel() == 21
