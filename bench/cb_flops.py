"""python -m bench.cb_flops [--latent 128 64 32] [--strength 0.43]: Balanced Style's FLOPs per step over vanilla.

A load-independent check of the style-injection cost on the full SDXL topology with the shipped SDXL table:
the UNet is built on the meta device and one CFG step's UNet work is counted with torch's FlopCounterMode,
for vanilla (cond + uncond rows) and for the real Balanced Style path (reference_branch.run_with_reference
adding one reference row per chunk, and the chained attn1 replaces doing AdaIN and K/V sharing in the
layers the table picks). The table's rows pick different layers; `--rows` evenly spaced rows are counted
(each count walks the whole UNet, a few seconds) and the mean and the worst are printed.
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
import conduit_pack.patches.engine.attention  # noqa: E402
import conduit_pack.patches.tables.table  # noqa: E402

MARKER = "conduit_balanced_style"


def ratios(side: int, batch: int, strength: float, rows: int) -> tuple[float, float]:
    """(mean, worst) patched/vanilla FLOP ratio of one CFG step over evenly spaced timestep rows of the table."""
    import conduit  # noqa: F401  (registers conduit_pack for the imports below)

    from .meta_unet import flops, inputs, sdxl_full_meta_unet, unet_call

    import conduit_pack.patches.conditional_balance.style as bs
    import conduit_pack.patches.conditional_balance.reference as rb
    inner = conduit_pack.patches.engine.attention.default_attention
    table = conduit_pack.patches.tables.table.table_for_family("sdxl", "style_qk", "bench")
    apply = unet_call(sdxl_full_meta_unet())
    settings = bs.StyleSettings(strength)
    cou = [0, 1]
    replace = {"attn1": {key: bs.make_replace(key)(inner) for key in table.layer_keys}}
    x, ts, c = inputs(2 * batch, side, {"cond_or_uncond": cou})
    vanilla = flops(lambda: apply(x, ts, **c))
    selector = bs.LayerSelector(table, strength)
    ref = torch.empty(1, 4, side, side, device="meta")
    out = []
    n = len(table.timesteps)
    picked = sorted({round(i * (n - 1) / max(rows - 1, 1)) for i in range(rows)})
    for t in (table.timesteps[i] for i in picked):
        plan = bs.StepPlan(*selector.at(t), settings)
        x, ts, c = inputs(2 * batch, side, {"cond_or_uncond": cou, "patches_replace": replace})
        styled = flops(lambda: rb.run_with_reference(apply, x, ts, c, lambda *a: (ref, plan), MARKER))
        out.append(styled / vanilla)
    return sum(out) / len(out), max(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cb_flops")
    p.add_argument("--latent", type=int, nargs="+", default=[128, 64, 32], help="square latent sides")
    p.add_argument("--strength", type=float, default=0.43, help="lambda_S")
    p.add_argument("--rows", type=int, default=5, help="table rows counted, evenly spaced")
    args = p.parse_args(argv)
    import_host(find_host())
    from conduit.pack import import_pack

    from .meta_unet import meta_attention

    import_pack(run_init=False)
    print(f"lambda_S = {args.strength:g}, cfg > 1 (cond + uncond chunks), shipped sdxl_style_qk table, "
          f"{args.rows} rows\n")
    print("| latent | batch | mean over table rows | worst row | target |\n|---|---|---|---|---|")
    with meta_attention():
        for side in args.latent:
            for batch, target in ((1, 2.1), (4, 1.35)):
                mean, worst = ratios(side, batch, args.strength, args.rows)
                print(f"| {side * 8}x{side * 8} | {batch} | {mean:.4f} | {worst:.4f} | <={target} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
