"""COW's sigma-space steps on flow-matching latents x = (1 - s) x0 + s eps (SD3/SD3.5, Flux), checked against
the forward process written out here, on large samples."""
import math

import pytest
import torch

import conduit  # noqa: F401
import conduit_pack.patches.cow.cow_math as cm
from conduit_pack.patches.engine.errors import ConduitError

N = 400_000


def draws(seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(N, generator=g, dtype=torch.float64) * 1.5 + 2.0  # a signal with mean and spread
    return x0, torch.randn(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("sigma,sigma_next", [(0.9, 0.6), (0.5, 0.2), (1.0, 0.7)])
def test_ddim_eta_step_keeps_the_flow_marginal_and_the_forward_covariance(eta, sigma, sigma_next):
    x0, eps, z = draws(1)
    x = (1 - sigma) * x0 + sigma * eps
    out = cm.ddim_step(x, x0, sigma, sigma_next, eta, z, flow=True)
    noise = out - (1 - sigma_next) * x0
    assert float(noise.std()) == pytest.approx(sigma_next, rel=0.01)  # the marginal at sigma_next
    assert abs(float(noise.mean())) < 0.01
    if eta == 1.0:
        # DDPM's posterior (eta 1): (x, x_next) jointly as the forward process makes them,
        # x = (a / a_next) x_next + n  =>  E[(x - a x0)(x_next - a_next x0)] = (a / a_next) sigma_next^2
        want = (1 - sigma) / (1 - sigma_next) * sigma_next ** 2
        assert float(((x - (1 - sigma) * x0) * noise).mean()) == pytest.approx(want, rel=0.02, abs=0.003)


def test_ve_steps_are_unchanged_by_the_flow_option():
    x0, eps, z = draws(2)
    x = x0 + 0.8 * eps
    assert torch.equal(cm.ddim_step(x, x0, 0.8, 0.3, 1.0, z), cm.ddim_step(x, x0, 0.8, 0.3, 1.0, z, flow=False))
    assert cm.ancestral_sigmas(0.8, 0.3, 1.0) == cm.ancestral_sigmas(0.8, 0.3, 1.0, False)
    # at eta 0, DDIM is the same Euler step on both forms (the flow branch matters for eta > 0)
    a = cm.ddim_step(x, x0, 0.8, 0.3, 0.0, None, flow=True)
    assert torch.allclose(a, cm.ddim_step(x, x0, 0.8, 0.3, 0.0, None), atol=1e-12)
    assert cm.ancestral_sigmas(0.8, 0.3, 1.0, True) != cm.ancestral_sigmas(0.8, 0.3, 1.0)


@pytest.mark.parametrize("s_from,s_to", [(0.3, 0.7), (0.6, 1.0), (0.05, 0.5)])
def test_exact_flow_renoise_reaches_the_flow_marginal(s_from, s_to):
    x0, eps, z = draws(3)
    x = (1 - s_from) * x0 + s_from * eps
    a, b = cm.renoise_coefficients([1.0, s_to, 0.5, s_from, 0.0], 3, 1, "exact", "n", flow=True)
    out = a * x + b * z
    noise = out - (1 - s_to) * x0
    assert float(noise.std()) == pytest.approx(s_to, rel=0.01) and abs(float(noise.mean())) < 0.01
    assert a == pytest.approx((1 - s_to) / (1 - s_from))
    ve_a, ve_b = cm.renoise_exact(s_from, s_to)
    assert float((ve_a * x + ve_b * z - (1 - s_to) * x0).mean()) > 0.1  # the VE formula keeps too much signal


def test_flow_inversion_feeds_the_latent_unscaled_and_reference_renoise_is_refused():
    assert cm.inversion_input_scale(0.2, 0.5, flow=True) == 1.0
    assert cm.inversion_input_scale(0.2, 0.5) == pytest.approx(math.sqrt(1.25 / 1.04))
    assert cm.signal(0.25, True) == 0.75 and cm.signal(0.25) == 1.0
    with pytest.raises(ConduitError, match="flow-matching"):
        cm.renoise_coefficients([1.0, 0.8, 0.5, 0.2, 0.0], 3, 1, "reference-compatible", "Node", flow=True)
