"""python -m bench.seg_flops [--latent 128 32]: SEG's FLOPs per step over vanilla on the full SDXL topology.

A load-independent check of the prefix sharing that needs no weights: the UNet is built on the meta device and
one sampling step's UNet work is counted with torch's FlopCounterMode, for vanilla CFG, SEG's forked main
pass (the real fork code: hooks, replaces, twin rows) and the anchors' separate extra pass.
"""
from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conduit.host import find_host, import_host  # noqa: E402

MID_DEPTH = 10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.seg_flops")
    p.add_argument("--latent", type=int, nargs="+", default=[128, 32], help="square latent sides")
    args = p.parse_args(argv)
    import_host(find_host())
    import comfy.ldm.modules.attention as cattn
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from torch.utils.flop_counter import FlopCounterMode

    from conduit.pack import import_pack, pack_module
    from toymodel import build

    import_pack(run_init=False)
    fork_mod, seg_attn = pack_module("patches.seg_fork"), pack_module("patches.seg_attention")
    inner = pack_module("patches.attention").default_attention
    cfg = dict(build._model_config("sdxl_full").unet_config)
    cfg.update(device="meta", operations=comfy.ops.disable_weight_init, dtype=torch.float32)
    unet = UNetModel(**cfg)
    keys = [("middle", 0, i) for i in range(MID_DEPTH)]
    model = types.SimpleNamespace(diffusion_model=unet, model_sampling=types.SimpleNamespace(
        calculate_denoised=lambda s, out, x: x - out))

    def flops(fn) -> int:
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops()

    def unet_call(x, t, c):
        return unet(x, t, context=c["c_crossattn"], y=c["y"], control=None,
                    transformer_options=c["transformer_options"])

    def inputs(rows: int, side: int, options: dict):
        meta = {"device": "meta"}
        return (torch.empty(rows, 4, side, side, **meta), torch.empty(rows, **meta),
                {"c_crossattn": torch.empty(rows, 77, 2048, **meta), "y": torch.empty(rows, 2816, **meta),
                 "transformer_options": options})

    saved = cattn.optimized_attention
    cattn.optimized_attention = cattn.attention_pytorch  # the only attention that runs on meta tensors
    try:
        print("| latent | cfg | sigma | SEG forked main pass | separate extra pass |\n|---|---|---|---|---|")
        for side in args.latent:
            for label, cou in (("> 1", [1, 0]), ("= 1", [0])):
                vanilla = flops(lambda: unet_call(*inputs(len(cou), side, {"cond_or_uncond": cou})))
                for sigma in (-1.0, 10.0):
                    fork = fork_mod.PrefixFork("flops", ("middle", 0), keys,
                                               lambda n, n2, f, s=sigma: seg_attn.blurred_attention(s, n, n2, f),
                                               lambda m, s: True)
                    x, t, c = inputs(len(cou), side, {"cond_or_uncond": cou})
                    call = fork_mod.ApplyCall(x, t, c, model, unet_call)
                    slices = [s for k, s in fork_mod.chunk_slices(len(cou), cou) if k == 0]
                    forked = flops(lambda: fork._fork(call, 1.0, cou, slices, fork._fork_module(unet)))
                    replace = {"attn1": {k: seg_attn.blurred_attention(sigma)(inner) for k in keys}}
                    extra = flops(lambda: unet_call(*inputs(1, side, {"cond_or_uncond": [0],
                                                                      "patches_replace": replace})))
                    name = "inf" if sigma < 0 else f"{sigma:g}"
                    print(f"| {side * 8}x{side * 8} | {label} | {name} | {forked / vanilla:.4f} | "
                          f"{(vanilla + extra) / vanilla:.4f} |")
    finally:
        cattn.optimized_attention = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
