"""The one-backward importance equals its definition computed through the full Jacobian (tiny SD1.5 UNet).

Definition (docs/gradsam.md): with D_c, D_u the denoised cond/uncond predictions and A the attention
probabilities of a chosen layer (cond rows), g = sum_out (D_c - D_u)[out] * dD_c[out]/dA and
I(q) = sum_heads sum_{s in subject} A[h, q, s] * f(g[h, q, s]), f = |.| (abs) or ReLU (gradsam).
The oracle below builds dD_c/dA element by element (torch.autograd.functional.jacobian over an attention
tensor fed into the UNet; for several layers, one layer at a time, every other layer's attention staying a
function of it), which shares nothing with the pass except ComfyUI's UNet itself.
"""
import pytest
import torch
import torch.nn.functional as F

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.gradsam.gradient_pass as gp
import conduit_pack.patches.gradsam.sampler as gs
import conduit_pack.patches.engine.layers as layers_lib
import conduit_pack.patches.engine.grid as grid_lib

SUBJECTS = ((3,), (5, 6))
LATENT = (8, 8)


def run_pass(model, settings, pos, neg, percent=0.5):
    """gradient_pass inside a real sampling run (SamplerCustom path); returns (x, sigma, result)."""
    import comfy.samplers

    seen = {}

    def capture(m, x, sigmas, extra_args=None, callback=None, disable=None):
        base, p, n = gs.sampler_conds(m, extra_args)
        seen["x"] = x.detach().clone()
        seen["result"] = gp.gradient_pass(base, p, n, x, sigmas[0], extra_args["model_options"], settings, "t")
        return x

    sigma = float(model.model.model_sampling.percent_to_sigma(percent))
    testing.sample_custom(model, pos, neg, comfy.samplers.KSAMPLER(capture), torch.tensor([sigma, 0.0]),
                          torch.zeros(1, 4, *LATENT))
    return seen["x"], sigma, seen["result"]


def oracle_maps(base, x, sigma, pos_ctx, neg_ctx, keys, mode):
    """Per-layer importance [1, S, h, w] on each layer's own grid, through the explicit Jacobian."""
    s = torch.tensor([sigma])
    probs = {}

    def explicit(key, given, record):
        def fn(q, k, v, extra):
            h = extra["n_heads"]
            b, n, _ = q.shape
            qh, kh, vh = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
            a = torch.softmax(qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5, dim=-1)
            if record:
                probs[key] = a.detach().clone()
            if given is not None and key in given:
                a = given[key]
            return (a @ vh).transpose(1, 2).reshape(b, n, -1)
        return fn

    def denoise(ctx, given=None, record=False):
        repl = {key: explicit(key, given, record) for key in keys}
        return base.apply_model(x, s, c_crossattn=ctx, transformer_options={"patches_replace": {"attn2": repl}})

    with torch.no_grad():
        d_c = denoise(pos_ctx, record=True)
        d_u = denoise(neg_ctx)
    w = (d_c - d_u).flatten()
    a0 = tuple(probs[key] for key in keys)
    jac = []
    for key, a in zip(keys, a0):  # one layer at a time: every other layer's attention stays a function of it
        # ComfyUI's blocks add to the residual stream in place after a LayerNorm saved it: give autograd copies
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
            jac.append(torch.autograd.functional.jacobian(lambda a_, k_=key: denoise(pos_ctx, {k_: a_}).flatten(), a))
    maps = []
    for a, j in zip(a0, jac):
        g = torch.einsum("o,o...->...", w, j)  # the cotangent contraction, done on the full Jacobian
        weight = g.abs() if mode == "abs" else g.clamp_min(0)
        hw = grid_lib.token_grid(LATENT, a.shape[2])
        per = [(a[..., list(cols)] * weight[..., list(cols)]).sum(dim=(1, 3)).reshape(1, 1, *hw) for cols in SUBJECTS]
        maps.append(torch.cat(per, dim=1))
    return maps


@pytest.mark.parametrize("mode", ["abs", "gradsam"])
def test_one_pass_importance_equals_full_jacobian_definition(tiny_sd15, mode):
    pos, neg = tiny_sd15.cond(1, 0), tiny_sd15.cond(1, 1)
    settings = gp.MaskSettings(SUBJECTS, ("a", "b"), 77, score=mode)
    calls = []
    real_grad = torch.autograd.grad

    def counting(*a, **k):
        calls.append(1)
        return real_grad(*a, **k)

    torch.autograd.grad = counting
    try:
        x, sigma, result = run_pass(tiny_sd15.model, settings, pos, neg)
    finally:
        torch.autograd.grad = real_grad
    assert len(calls) == 1  # one backward pass
    key = gp.choose_layers(tiny_sd15.model.model, "last", "", "t")[0].key
    assert result.layers == ["o5.0"] and key == ("output", 5, 0)
    (expected,) = oracle_maps(tiny_sd15.model.model, x, sigma, pos[0][0], neg[0][0], [key], mode)
    assert expected.shape[-2:] == LATENT  # the last up layer sits at latent resolution: no resampling
    assert expected.abs().max() > 0
    torch.testing.assert_close(result.importance, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def test_two_layer_aggregate_equals_definition(tiny_sd15):
    pos, neg = tiny_sd15.cond(1, 2), tiny_sd15.cond(1, 3)
    chosen = [layer for layer in layers_lib.attention_layers(tiny_sd15.model) if layer.short in ("o3.0", "o5.0")]
    assert len(chosen) == 2 and chosen[0].grid(LATENT) != chosen[1].grid(LATENT)
    settings = gp.MaskSettings(SUBJECTS, ("a", "b"), 77, layers="custom", custom_layers="o5.0, o3")
    x, sigma, result = run_pass(tiny_sd15.model, settings, pos, neg, percent=0.3)
    maps = oracle_maps(tiny_sd15.model.model, x, sigma, pos[0][0], neg[0][0], [c.key for c in chosen], "abs")
    up = [F.interpolate(m, size=LATENT, mode="bilinear", align_corners=False) for m in maps]
    expected = sum(m / m.mean(dim=(-2, -1), keepdim=True) for m in up) / 2
    torch.testing.assert_close(result.importance, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
