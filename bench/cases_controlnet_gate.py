"""ControlNet timestep gate (Conditional Balance lambda_T) against the plain ControlNet.

down_only: the official gate (down residuals off below lambda_T, mid kept): the ControlNet still runs every
step, so this only measures the gate's overhead. all_gated: mid gated too at every step, so the ControlNet is
never computed; the row reports the saving against the plain ControlNet and the cost of no ControlNet at all."""
from __future__ import annotations

import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from conduit_pack.toyworld import build

from .harness import Row, time_pair



def cases(ctx) -> list[Row]:
    import conduit_pack.patches.conditional_balance.controlnet_gate as gate
    base = ctx.model()
    family = "sdxl" if ctx.topology == "tiny" else "sdxl_full"
    controlnet = build.build_controlnet(family, 1, device=ctx.device)
    h, w = ctx.latent_hw
    hint = torch.rand(1, 3, h * 8, w * 8, generator=torch.Generator().manual_seed(0)).to(ctx.device)
    pos, neg = ctx.cond(1, 0), ctx.cond(1, 1)
    shared = controlnet.copy().set_cond_hint(hint, 0.8, (0.0, 1.0))
    cpos = [[t, {**e, "control": shared, "control_apply_to_uncond": False}] for t, e in pos]
    cneg = [[t, {**e, "control": shared, "control_apply_to_uncond": False}] for t, e in neg]

    def run(p, n):
        return lambda: ctx.sample(base, positive=p, negative=n)

    down = gate.gate_conditionings([cpos, cneg], gate.GateSettings(0.5))
    every = gate.gate_conditionings([cpos, cneg], gate.GateSettings(1.0, gate_mid=True))
    b, p = time_pair(run(cpos, cneg), run(*down), ctx.device, ctx.repeats)
    rows = [ctx.row("controlnet_gate", "down_only", b, p, target=1.02, control_balance=0.5, steps=ctx.steps)]
    b2, p2 = time_pair(run(cpos, cneg), run(*every), ctx.device, ctx.repeats)
    _, none = time_pair(run(cpos, cneg), run(pos, neg), ctx.device, ctx.repeats)
    rows.append(ctx.row("controlnet_gate", "all_gated", b2, p2, control_balance=1.0, gate_mid=True,
                        steps=ctx.steps, no_controlnet_s=round(none, 5),
                        saving_per_step_s=round((b2 - p2) / ctx.steps, 5),
                        saving_fraction=round(1 - p2 / b2, 4)))
    return rows
