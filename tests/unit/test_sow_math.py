"""SOW attention modulation: factorized bias vs a dense oracle built point by point from the design equations."""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.sow.sow_math as sm


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


class AllocationLog(TorchDispatchMode):
    """Elements of every new storage an op creates while active (outputs are kept alive, so no address is
    reused and missed); views of existing tensors add nothing."""

    def __init__(self, *known):
        super().__init__()
        self.seen = {t.untyped_storage().data_ptr() for t in known}
        self.kept = []
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.seen:
                self.seen.add(t.untyped_storage().data_ptr())
                self.kept.append(t)
                self.sizes.append(t.untyped_storage().nbytes() // t.element_size())
        return out


def measured_augmentation(side, heads=10, d=64, b=2, device="cpu"):
    """(elements allocated by augmented_attention itself, what it hands the attend callback, q's elements) on a
    side x side grid. The callback returns its v (right shape, nothing new allocated)."""
    n = side * side
    q, k, v = (torch.randn(b, n, heads * d, device=device) for _ in range(3))
    cond, related = masks((side, side))
    reg = sm.regions(cond, related, (side, side), sm.SowParams())
    f, g = (t[None].expand(b, -1, -1).contiguous().to(device) for t in (reg.f, reg.g))
    handed = []

    def attend(q2, k2, v2, d2):
        handed.extend([q2.numel(), k2.numel(), v2.numel(), d2])
        return v2

    log = AllocationLog(q, k, v, f, g)
    with log:
        sm.augmented_attention(q, k, v, heads, f, g, attend)
    return sum(log.sizes), handed, q.numel()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the padded head channels are a CUDA path"))])
def test_augmentation_memory_is_linear_in_tokens(device):
    """SOW's bias rides in extra head channels: no N x N tensor is made. Measured at SDXL's 64 x 64 grid (10
    heads of 64) against one N x N score matrix per head, and at 32 x 32 to see the growth is linear in N."""
    heads, d, b = 10, 64, 2
    big, handed, q_elems = measured_augmentation(64, heads, d, b, device)
    small, _, _ = measured_augmentation(32, heads, d, b, device)
    n = 64 * 64
    scores = b * heads * n * n  # what a dense bias added to the logits would need, per layer call
    # the callback gets q, k, v with one extra channel per head on CPU (r = 1; CUDA pads it to 8), nothing else
    extra = 1 if device == "cpu" else sm.CUDA_PAD
    assert handed == [b * n * heads * (d + extra)] * 3 + [d + extra]
    assert sum(handed[:3]) < scores / 15
    # everything allocated besides the callback's inputs: a few q-sized temporaries, far below the scores
    assert big < 6 * q_elems * (d + extra) / d and big < scores / 10, (big, q_elems, scores)
    assert big / small == pytest.approx(4.0, rel=0.02)  # 4x the tokens, 4x the memory (N^2 would be 16x)


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
