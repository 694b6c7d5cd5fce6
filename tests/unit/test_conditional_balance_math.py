"""Conditional Balance math against independent computations: AdaIN, shared attention, reference rows, gate."""
import math

import pytest
import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.conditional_balance.style_math as sm
import conduit_pack.patches.conditional_balance.controlnet_gate as gate


def loop_adain(x, ref):
    """Per row and channel with explicit Python sums: mean, unbiased variance + 1e-5, then rescale."""
    out = torch.empty_like(x, dtype=torch.float64)
    b, n, c = x.shape
    for i in range(b):
        r = ref[i] if ref.shape[0] == b else ref[0]
        for ch in range(c):
            xs = [float(v) for v in x[i, :, ch]]
            rs = [float(v) for v in r[:, ch]]
            mx, mr = sum(xs) / n, sum(rs) / len(rs)
            sx = math.sqrt(sum((v - mx) ** 2 for v in xs) / (n - 1) + 1e-5)
            sr = math.sqrt(sum((v - mr) ** 2 for v in rs) / (len(rs) - 1) + 1e-5)
            for t in range(n):
                out[i, t, ch] = (xs[t] - mx) / sx * sr + mr
    return out


def loop_attention(q, k, v, heads, shift=0.0, n_own=None):
    """softmax(q k^T / sqrt(d) [+ shift on reference tokens]) v, one head and one query at a time."""
    b, n, c = q.shape
    d = c // heads
    out = torch.zeros(b, n, c, dtype=torch.float64)
    for i in range(b):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            for t in range(n):
                logits = [float(q[i, t, sl].double() @ k[i, j, sl].double()) / math.sqrt(d) for j in range(k.shape[1])]
                if n_own is not None:
                    logits = [lg + (shift if j >= n_own else 0.0) for j, lg in enumerate(logits)]
                m = max(logits)
                w = [math.exp(lg - m) for lg in logits]
                z = sum(w)
                out[i, t, sl] = sum((w[j] / z) * v[i, j, sl].double() for j in range(k.shape[1]))
    return out


def test_adain_matches_loop_and_maps_reference_to_itself():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, generator=g) * 2 + 1
    ref = torch.randn(1, 9, 5, generator=g) * 0.5 - 3
    assert torch.allclose(sm.adain(x, ref).double(), loop_adain(x, ref), atol=1e-5)
    per_row = torch.randn(3, 7, 5, generator=g)
    assert torch.allclose(sm.adain(x, per_row).double(), loop_adain(x, per_row), atol=1e-5)
    assert torch.allclose(sm.adain(ref, ref), ref, atol=1e-5)
    mean, std = sm.channel_stats(sm.adain(x, ref))
    rmean, rstd = sm.channel_stats(ref)
    assert torch.allclose(mean, rmean.expand_as(mean), atol=1e-5)
    assert torch.allclose(std, rstd.expand_as(std), atol=1e-4)


@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (0.5, 0.0), (1.0, math.log(2.0)), (0.7, -0.4)])
def test_shared_attention_matches_loop(scale, shift):
    g = torch.Generator().manual_seed(1)
    heads, n, n_ref, c = 2, 5, 6, 8
    q, k, v = (torch.randn(2, n, c, generator=g) for _ in range(3))
    kr, vr = torch.randn(1, n_ref, c, generator=g), torch.randn(1, n_ref, c, generator=g)
    k_ext = sm.extend_with_reference(k, kr, scale)
    v_ext = sm.extend_with_reference(v, vr)
    bias = sm.reference_bias(n, n_ref, shift, q) if shift else None
    got = sm.attention(q, k_ext, v_ext, heads, bias).double()
    k_manual = torch.cat([k, scale * kr.expand(2, -1, -1)], 1)
    v_manual = torch.cat([v, vr.expand(2, -1, -1)], 1)
    want = loop_attention(q, k_manual, v_manual, heads, shift, n_own=n)
    assert torch.allclose(got, want, atol=1e-5)


def test_sharing_with_itself_leaves_reference_output_unchanged():
    """Why the reference row may take plain attention: [K;K], [V;V] gives the same softmax average."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 6, 8, generator=g) for _ in range(3))
    plain = sm.attention(q, k, v, 2)
    for shift in (0.0, 0.69):
        bias = sm.reference_bias(6, 6, shift, q)
        doubled = sm.attention(q, torch.cat([k, k], 1), torch.cat([v, v], 1), 2, bias)
        assert torch.allclose(plain, doubled, atol=1e-5)


@pytest.mark.parametrize("cou,m", [([0], 1), ([1, 0], 1), ([1, 0], 3), ([0, 1, 2], 2)])
def test_reference_rows_round_trip_and_layout(cou, m):
    b = len(cou) * m
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1) + 10
    ref = torch.tensor([-1.0]).view(1, 1, 1)
    ex = sm.insert_rows(x, cou, ref)
    # independent expectation: [ref, chunk rows] for every chunk
    want = []
    for c in range(len(cou)):
        want += [-1.0] + [10.0 + c * m + j for j in range(m)]
    assert ex.flatten().tolist() == want
    assert torch.equal(sm.strip_rows(ex, cou), x)
    refs, targets = sm.split_reference(ex, cou)
    assert refs.flatten().tolist() == [-1.0] * len(cou)
    assert targets.shape[:2] == (len(cou), m) and torch.equal(targets.reshape(b, 1, 1), x)
    assert torch.equal(sm.join_reference(refs, targets), ex)
    copied = sm.insert_rows(x, cou)  # reference inherits its chunk's first row
    assert sm.split_reference(copied, cou)[0].flatten().tolist() == [10.0 + c * m for c in range(len(cou))]
    per_chunk = sm.insert_rows(x, cou, -torch.arange(1.0, len(cou) + 1).view(-1, 1, 1))
    assert sm.split_reference(per_chunk, cou)[0].flatten().tolist() == [-1.0 - c for c in range(len(cou))]
    zeros = sm.insert_zero_rows(x, cou)
    zr, zt = sm.split_reference(zeros, cou)
    assert zr.abs().sum() == 0 and torch.equal(zt.reshape(b, 1, 1), x)


def test_reference_rows_reject_uneven_batches():
    with pytest.raises(ValueError):
        sm.insert_rows(torch.zeros(3, 1), [0, 1])
    with pytest.raises(ValueError):
        sm.split_reference(torch.zeros(2, 1), [0, 1])  # two chunks of one row each cannot hold ref + target


def test_grouped_extension_matches_per_row_concat():
    g = torch.Generator().manual_seed(3)
    kt = torch.randn(2, 3, 5, 4, generator=g)  # [chunks, m, N, C]
    kr = torch.randn(2, 6, 4, generator=g)  # one reference per chunk
    ext = sm.extend_with_reference(kt, kr.unsqueeze(1), 0.5)
    for c in range(2):
        for j in range(3):
            assert torch.equal(ext[c, j], torch.cat([kt[c, j], 0.5 * kr[c]]))
    ad = sm.adain(kt, kr.unsqueeze(1))
    for c in range(2):
        assert torch.allclose(ad[c].double(), loop_adain(kt[c], kr[c:c + 1]), atol=1e-5)


def test_style_layer_count_and_top_indices():
    assert [sm.style_layer_count(s, 70) for s in (0.0, 0.43, 0.57, 1.0)] == [0, 30, 39, 70]
    with pytest.raises(ValueError):
        sm.style_layer_count(1.5, 70)
    scores = torch.tensor([0.5, 0.1, 0.3, 0.1, 0.9])
    assert sm.top_indices(scores, 3) == [1, 3, 2]  # ties keep layer order
    assert sm.top_indices(scores, 0) == []


def test_gate_window_rule():
    s = gate.GateSettings(0.85)
    assert [s.gated(t) for t in (999, 850, 849.9, 500, 0)] == [False, False, True, True, True]
    inv = gate.GateSettings(0.85, invert=True)
    assert [inv.gated(t) for t in (999, 850, 849, 0)] == [True, True, False, False]
    assert gate.GateSettings(0.0).never and not gate.GateSettings(0.0).gated(0)
    assert not gate.GateSettings(0.0, invert=True).never and gate.GateSettings(0.0, invert=True).gated(0)
    assert all(gate.GateSettings(1.0).gated(t) for t in range(1000))


def test_gate_residuals_keeps_mid_only():
    a, b, mid = torch.ones(1), torch.ones(2), torch.ones(3)
    control = {"input": [a], "middle": [mid], "output": [a, None, b]}
    out = gate.gate_residuals(control, gate_mid=False)
    assert out == {"input": [None], "middle": [mid], "output": [None, None, None]}
    assert control["output"][0] is a  # the original dict is not modified
    assert gate.gate_residuals(control, gate_mid=True)["middle"] == [None]
    assert gate.gate_residuals(None, False) is None


class FakeSampling:
    def timestep(self, sigma):
        return sigma * 100.0  # sigma 5 -> t 500


class FakeControlNet:
    def __init__(self):
        self.calls, self.previous_controlnet, self.strength = [], None, 0.8

    def get_control(self, x, t, cond, batched, *rest):
        self.calls.append((float(t[0]), rest))
        return {"input": [], "middle": [torch.ones(1)], "output": [torch.ones(1), torch.ones(1)]}

    def pre_run(self, model, fn):
        self.pre = True

    def copy(self):
        return FakeControlNet()


def test_gated_control_forwards_protocol_and_gates_by_timestep():
    import copy

    inner = FakeControlNet()
    model = type("M", (), {"model_sampling": FakeSampling()})()
    cond = [[torch.zeros(1), {"control": inner}]]
    (pos, neg) = gate.gate_conditionings([cond, cond], gate.GateSettings(0.5, gate_mid=True))
    g = pos[0][1]["control"]
    assert g is neg[0][1]["control"] and cond[0][1]["control"] is inner
    g.pre_run(model, None)
    assert inner.pre and g.strength == 0.8
    g.strength = 0.5  # attribute writes reach the wrapped ControlNet
    assert inner.strength == 0.5
    assert g.get_control(None, torch.tensor([6.0]), {}, 2, "opts")["output"][0] is not None
    assert g.get_control(None, torch.tensor([4.0]), {}, 2) is None  # all gated: not computed
    assert inner.calls == [(6.0, ("opts",))]  # sigma 6 = timestep 600 >= 500: ungated, arguments passed on
    clone = copy.deepcopy(g)
    assert isinstance(clone, gate.GatedControl) and clone.settings == g.settings
    assert isinstance(g.copy().inner, FakeControlNet)
    assert gate.gate_conditionings([cond], gate.GateSettings(0.0))[0][0][1]["control"] is inner
