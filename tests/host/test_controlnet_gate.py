"""Conduit ControlNet Timestep Gate on a real ComfyUI with the core Apply ControlNet node and tiny ControlNets."""
import pytest
import torch

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from tests.host.cb_helpers import hand_table, ref_latent
from conduit_pack.toyworld import build

import conduit_pack.nodes.conditional_balance as cbn
import conduit_pack.patches.conditional_balance.controlnet_gate as gate


def hint(hw=(32, 32), seed=0):
    return torch.rand(1, hw[0] * 8, hw[1] * 8, 3, generator=torch.Generator().manual_seed(seed))


def apply_controlnet(pos, neg, cn, image, strength=0.8):
    import nodes

    return nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, cn, image, strength, 0.0, 1.0)[:2]


def record_control_calls(conditioning, calls, name):
    """Make the ControlNet object(s) attached by Apply ControlNet record every get_control call."""
    seen = set()
    for _, extra in conditioning:
        ctrl = extra.get("control")
        while ctrl is not None and id(ctrl) not in seen:
            seen.add(id(ctrl))
            original = ctrl.get_control

            def rec(x, t, cond, batched, *rest, original=original):
                calls.append((name, float(t[0])))
                return original(x, t, cond, batched, *rest)

            ctrl.get_control = rec
            ctrl = ctrl.previous_controlnet


def unet_controls(model):
    """(timestep, {'middle': all present?, 'output': all present?}) for every UNet forward."""
    seen = []

    def hook(module, args, kwargs):
        control = kwargs.get("control")
        t = float((args[1] if len(args) > 1 else kwargs["timesteps"])[0])
        sigma = float(kwargs["transformer_options"]["sigmas"].flatten()[0])
        if control is None:
            seen.append((t, sigma, None))
        else:
            seen.append((t, sigma, {k: [v is not None for v in control[k]] for k in ("middle", "output")}))

    return seen, model.model.diffusion_model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.fixture(scope="module")
def controlnets():
    return build.build_controlnet("sdxl", 1), build.build_controlnet("sdxl", 2)


def run(tiny, pos, neg, steps=6, cfg=4.0, hw=(32, 32)):
    seen, handle = unet_controls(tiny.model)
    try:
        out = testing.sample(tiny.model, pos, neg, steps=steps, cfg=cfg, latent_hw=hw)
    finally:
        handle.remove()
    return out, seen


@pytest.mark.parametrize("balance,invert", [(0.5, False), (0.85, False), (0.5, True)])
def test_down_residuals_gated_per_step_and_mid_kept(tiny_sdxl, controlnets, balance, invert):
    pos, neg = apply_controlnet(tiny_sdxl.cond(), tiny_sdxl.cond(seed=1), controlnets[0], hint())
    calls = []
    record_control_calls(pos, calls, "cn")
    gpos, gneg = cbn.ConduitControlNetTimestepGate().gate(pos, neg, balance, False, invert)
    _, seen = run(tiny_sdxl, gpos, gneg)
    assert len(seen) == 6 and len(calls) == 6  # ControlNet still computed every step (the mid residual stays)
    gated_steps = 0
    for t, _, control in seen:
        gated = (t < balance * 1000) != invert
        gated_steps += gated
        assert all(control["middle"])
        assert not any(control["output"]) if gated else all(control["output"])
    assert 0 < gated_steps < 6


def test_gate_mid_skips_the_controlnet_entirely(tiny_sdxl, controlnets):
    pos, neg = apply_controlnet(tiny_sdxl.cond(), tiny_sdxl.cond(seed=1), controlnets[0], hint())
    calls = []
    record_control_calls(pos, calls, "cn")
    gpos, gneg = cbn.ConduitControlNetTimestepGate().gate(pos, neg, 0.5, True, False)
    _, seen = run(tiny_sdxl, gpos, gneg)
    ungated = [t for t, _, _ in seen if t >= 500]
    assert [t for _, t in calls] and len(calls) == len(ungated)
    for t, _, control in seen:
        assert (control is None) == (t < 500)


def test_chained_controlnets_are_all_gated(tiny_sdxl, controlnets):
    pos, neg = tiny_sdxl.cond(), tiny_sdxl.cond(seed=1)
    pos, neg = apply_controlnet(pos, neg, controlnets[0], hint(seed=0))
    pos, neg = apply_controlnet(pos, neg, controlnets[1], hint(seed=1), 0.5)
    assert pos[0][1]["control"].previous_controlnet is not None
    calls = []
    record_control_calls(pos, calls, "cn")
    gpos, gneg = cbn.ConduitControlNetTimestepGate().gate(pos, neg, 0.5, True, False)
    assert gpos[0][1]["control"] is gneg[0][1]["control"]  # still one shared object: cond/uncond batch together
    _, seen = run(tiny_sdxl, gpos, gneg)
    ungated = sum(1 for t, _, _ in seen if t >= 500)
    assert len(calls) == 2 * ungated  # both ControlNets of the chain run only at ungated steps
    # a ControlNet applied after the gate is not gated
    later_pos, later_neg = apply_controlnet(gpos, gneg, controlnets[1], hint(seed=2))
    _, seen = run(tiny_sdxl, later_pos, later_neg)
    for _t, _, control in seen:
        assert all(control["output"]) and all(control["middle"])


def test_zero_balance_is_bit_identical_and_input_untouched(tiny_sdxl, controlnets):
    pos, neg = apply_controlnet(tiny_sdxl.cond(), tiny_sdxl.cond(seed=1), controlnets[0], hint())
    original = pos[0][1]["control"]
    plain, _ = run(tiny_sdxl, pos, neg, steps=3)
    gpos, gneg = cbn.ConduitControlNetTimestepGate().gate(pos, neg, 0.0, False, False)
    gated, _ = run(tiny_sdxl, gpos, gneg, steps=3)
    assert torch.equal(plain, gated)
    assert pos[0][1]["control"] is original
    wrapped, wneg = cbn.ConduitControlNetTimestepGate().gate(pos, neg, 0.9, False, False)
    assert isinstance(wrapped[0][1]["control"], gate.GatedControl) and pos[0][1]["control"] is original
    out, _ = run(tiny_sdxl, wrapped, wneg, steps=3)
    assert (out - plain).abs().max() > 1e-4
    again, _ = run(tiny_sdxl, wrapped, wneg, steps=3)
    assert torch.equal(out, again)


def test_full_gate_equals_no_down_residuals_reference(tiny_sdxl, controlnets):
    """lambda_T = 1 equals a ControlNet whose down residuals are removed by hand at every step."""
    pos, neg = apply_controlnet(tiny_sdxl.cond(), tiny_sdxl.cond(seed=1), controlnets[0], hint())
    gpos, gneg = cbn.ConduitControlNetTimestepGate().gate(pos, neg, 1.0, False, False)
    gated, _ = run(tiny_sdxl, gpos, gneg, steps=3)
    m = tiny_sdxl.model.clone()

    def strip(apply_model, args):
        c = dict(args["c"])
        if c.get("control") is not None:
            c["control"] = {k: ([None] * len(v) if k != "middle" else v) for k, v in c["control"].items()}
        return apply_model(args["input"], args["timestep"], **c)

    m.set_model_unet_function_wrapper(strip)
    want = testing.sample(m, pos, neg, steps=3, cfg=4.0)
    assert torch.equal(gated, want)


def test_non_square_cfg1_and_controls_without_controlnet(tiny_sdxl, controlnets, caplog):
    pos, neg = apply_controlnet(tiny_sdxl.cond(width=320, height=200), tiny_sdxl.cond(seed=1), controlnets[0],
                                hint((25, 40)))
    gpos, gneg = cbn.ConduitControlNetTimestepGate().gate(pos, neg, 0.5, False, False)
    out, seen = run(tiny_sdxl, gpos, gneg, steps=4, cfg=1.0, hw=(25, 40))
    assert out.shape == (1, 4, 25, 40) and torch.isfinite(out).all()
    assert len(seen) == 4  # cfg 1: the uncond pass is skipped, one UNet call per step
    plain = tiny_sdxl.cond()
    with caplog.at_level("WARNING"):
        same, _ = cbn.ConduitControlNetTimestepGate().gate(plain, plain, 0.5, False, False)
    assert "no ControlNet" in caplog.text and same[0][1] == plain[0][1]


def test_gate_with_balanced_style_reference_rows(tiny_sdxl, controlnets):
    """Style + gated ControlNet: reference rows get zero residuals, images keep theirs."""
    import conduit_pack.patches.conditional_balance.style as bs
    import conduit_pack.patches.conditional_balance.reference as rb
    m = bs.apply_balanced_style(tiny_sdxl.model, hand_table(tiny_sdxl.model), rb.NoisedReference(ref_latent(), 0),
                                bs.StyleSettings(0.5))
    pos, neg = apply_controlnet(tiny_sdxl.cond(), tiny_sdxl.cond(seed=1), controlnets[0], hint())
    gpos, gneg = cbn.ConduitControlNetTimestepGate().gate(pos, neg, 0.5, False, False)
    residual_rows = []

    def hook(module, args, kwargs):
        control = kwargs.get("control")
        mid = control["middle"][0]
        residual_rows.append([float(mid[i].abs().sum()) for i in range(mid.shape[0])])

    handle = tiny_sdxl.model.model.diffusion_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out = testing.sample(m, gpos, gneg, steps=3, cfg=4.0)
    finally:
        handle.remove()
    assert torch.isfinite(out).all()
    for rows in residual_rows:
        assert len(rows) == 4 and rows[0] == 0 and rows[2] == 0 and rows[1] > 0 and rows[3] > 0
