"""python -m bench.dit_style_flops [--latent 128 64] [--strength 0.43 0.737]: Balanced Style's FLOPs per step over
vanilla on the full SD3.5-Large topology (38 joint blocks, width 2432), with the shipped SD3.5-Large table.

Same method as bench.cb_flops: the MMDiT is built on the meta device and one CFG step's work is counted with
torch's FlopCounterMode, for vanilla (cond + uncond rows) and for the real Balanced Style path
(reference.run_with_reference adding one reference row per chunk, and the DiT ops doing AdaIN on the image-token
q/k/v and sharing the reference's image tokens in the blocks the table picks, through ComfyUI's block replaces
and attention override). Text: 333 tokens (CLIP-L/G 77 + T5 256), as SD3.5's encoders give. The table's rows pick
different blocks; `--rows` evenly spaced rows are counted, and the mean and the worst are printed.
Needs a host with SD3 classes (COMFYUI_PATH at current ComfyUI).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = str(Path(__file__).resolve().parent.parent)
if REPO not in sys.path:  # never in front of an imported host: the pack's nodes/ would shadow ComfyUI's nodes
    sys.path.append(REPO)

from conduit.host import find_host, import_host  # noqa: E402

MARKER = "conduit_balanced_style"


def counts(side: int, batch: int, strength: float, rows: int) -> tuple[int, list[int], float]:
    """(vanilla FLOPs, Balanced Style FLOPs per counted table row, mean shared blocks) of one CFG step."""
    import conduit  # noqa: F401  (registers conduit_pack for the imports below)

    from .dit_flops import TEXT_TOKENS, _inputs
    from .meta_unet import flops
    from conduit_pack.toyworld.dit_build import build_dit

    import conduit_pack.patches.conditional_balance.dit_style as ds
    import conduit_pack.patches.conditional_balance.reference as rb
    import conduit_pack.patches.conditional_balance.style as bs
    import conduit_pack.patches.engine.dit_attention as da
    import conduit_pack.patches.tables.table as tables

    dit = build_dit("sd35l_full", device="meta").model.diffusion_model
    table = tables.builtin_table("sd35l_style_qkv", "bench")
    settings = bs.StyleSettings(strength)
    selector = bs.LayerSelector(table, strength, ("q", "k", "v"))
    replace = {"dit": {key[:2]: da.block_replace(ds.dit_style_op(key, MARKER), key[:2], None)
                       for key in table.layer_keys}}
    grid = (side // 2, side // 2)

    def apply(x, t, c_crossattn=None, y=None, transformer_options=None, **_):
        return dit(x, t, context=c_crossattn, y=y, transformer_options=transformer_options)

    cou = [0, 1]
    x, ts, c = _inputs("sd35l_full", 2 * batch, side, cou)
    vanilla = flops(lambda: apply(x, ts, **c))
    ref = torch.empty(1, 16, side, side, device="meta")
    out, shared = [], []
    n = len(table.timesteps)
    picked = sorted({round(i * (n - 1) / max(rows - 1, 1)) for i in range(rows)})
    for t in (table.timesteps[i] for i in picked):
        plan = selector.plan(t, settings, joint=True)
        shared.append(sum(plan.joint_flags(k)[3] for k in table.layer_keys))
        options = {"patches_replace": replace, da.LAYOUT_KEY: da.JointLayout(TEXT_TOKENS["sd35l_full"], grid)}
        x, ts, c = _inputs("sd35l_full", 2 * batch, side, cou, options)
        styled = flops(lambda: rb.run_with_reference(apply, x, ts, c, lambda *a: (ref, plan), MARKER))
        out.append(styled)
    return vanilla, out, sum(shared) / len(shared)


def ratios(side: int, batch: int, strength: float, rows: int) -> tuple[float, float, float]:
    """(mean, worst, mean shared blocks) of the patched/vanilla FLOP ratio over the counted table rows."""
    vanilla, styled, shared = counts(side, batch, strength, rows)
    return sum(styled) / len(styled) / vanilla, max(styled) / vanilla, shared


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dit_style_flops")
    p.add_argument("--latent", type=int, nargs="+", default=[128, 64], help="square latent sides")
    p.add_argument("--strength", type=float, nargs="+", default=[0.43, 28 / 38], help="lambda_S values")
    p.add_argument("--rows", type=int, default=5, help="table rows counted, evenly spaced")
    args = p.parse_args(argv)
    import_host(find_host())
    from conduit.pack import import_pack

    import_pack(run_init=False)
    print(f"SD3.5-Large full topology, cfg > 1 (cond + uncond chunks), shipped sd35l_style_qkv table, "
          f"{args.rows} rows\n")
    print("| latent | lambda_S | batch | mean over table rows | worst row | shared blocks (mean) | target |\n"
          "|---|---|---|---|---|---|---|")
    from .dit_flops import meta_dit_attention

    with meta_dit_attention():
        for side in args.latent:
            for strength in args.strength:
                mean, worst, shared = ratios(side, 1, strength, args.rows)
                print(f"| {side * 8}x{side * 8} | {strength:.3g} | 1 | {mean:.4f} | {worst:.4f} | {shared:.1f} "
                      f"| <=2.1 |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
