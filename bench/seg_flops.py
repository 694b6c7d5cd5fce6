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


REPO = str(Path(__file__).resolve().parent.parent)
if REPO not in sys.path:  # never in front of an imported host: the pack's nodes/ would shadow ComfyUI's nodes
    sys.path.append(REPO)

from conduit.host import find_host, import_host  # noqa: E402
import conduit_pack.patches.engine.attention  # noqa: E402
import conduit_pack.patches.engine.host  # noqa: E402
import conduit_pack.patches.engine.families  # noqa: E402

MID_DEPTH = 10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.seg_flops")
    p.add_argument("--latent", type=int, nargs="+", default=[128, 32], help="square latent sides")
    args = p.parse_args(argv)
    import_host(find_host())
    from conduit.pack import import_pack

    from .meta_unet import flops, inputs, meta_attention, sdxl_full_meta_unet, unet_call

    import_pack(run_init=False)
    import conduit_pack.patches.seg.fork as fork_mod
    import conduit_pack.patches.seg.blur_attention as seg_attn
    inner = conduit_pack.patches.engine.attention.default_attention
    sdxl = conduit_pack.patches.engine.families.family_by_id("sdxl")  # the meta UNet is not wrapped in a model
    unet = sdxl_full_meta_unet()
    apply = unet_call(unet)
    keys = [("middle", 0, i) for i in range(MID_DEPTH)]
    model = types.SimpleNamespace(diffusion_model=unet, model_sampling=types.SimpleNamespace(
        calculate_denoised=lambda s, out, x: x - out))

    def unet_fn(x, t, c):
        return apply(x, t, **c)

    with meta_attention():
        print("| latent | cfg | sigma | SEG forked main pass | separate extra pass |\n|---|---|---|---|---|")
        for side in args.latent:
            for label, cou in (("> 1", [1, 0]), ("= 1", [0])):
                vanilla = flops(lambda: unet_fn(*inputs(len(cou), side, {"cond_or_uncond": cou})))
                for sigma in (-1.0, 10.0):
                    fork = fork_mod.PrefixFork("flops", ("middle", 0), keys,
                                               lambda n, n2, f, s=sigma: seg_attn.blurred_attention(s, n, n2, f),
                                               lambda m, s: True)
                    x, t, c = inputs(len(cou), side, {"cond_or_uncond": cou})
                    call = conduit_pack.patches.engine.host.ApplyCall(x, t, c, model, unet_fn)
                    slices = [s for k, s in fork_mod.chunk_slices(len(cou), cou) if k == 0]
                    forked = flops(lambda: fork._fork(call, 1.0, cou, slices, sdxl.transformer(unet, "middle", 0)))
                    replace = {"attn1": {k: seg_attn.blurred_attention(sigma)(inner) for k in keys}}
                    extra = flops(lambda: unet_fn(*inputs(1, side, {"cond_or_uncond": [0],
                                                                      "patches_replace": replace})))
                    name = "inf" if sigma < 0 else f"{sigma:g}"
                    print(f"| {side * 8}x{side * 8} | {label} | {name} | {forked / vanilla:.4f} | "
                          f"{(vanilla + extra) / vanilla:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
