"""python -m bench.dit_flops: SEG's FLOPs per step over vanilla on the full SD3.5-Large and Flux-dev topologies.

As bench.seg_flops does for SDXL: the DiT is built on the meta device (no weights) and torch's FlopCounterMode
counts one sampling step's model work, for vanilla (cond + uncond at cfg > 1, cond only at cfg 1), SEG's forked
main pass (the real fork code on the real block forwards) and the separate extra pass it replaces.
1024x1024 images: 4096 image tokens; prompt tokens as ComfyUI's encoders give them (SD3.5: 77 CLIP + 256 T5,
Flux: 256 T5 minimum).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import types
from pathlib import Path

import torch

REPO = str(Path(__file__).resolve().parent.parent)
if REPO not in sys.path:
    sys.path.append(REPO)

from conduit.host import find_host, import_host  # noqa: E402

TEXT_TOKENS = {"sd35l_full": 77 + 256, "flux_dev_full": 256}
TOPOLOGIES = {"sd35l_full": "SD3.5 Large", "flux_dev_full": "Flux dev"}


def _inputs(name: str, rows: int, side: int, cou: list, extra_options: dict | None = None):
    from conduit_pack.toyworld import dit_build

    width, pooled = dit_build.CONTEXT[name]
    meta = {"device": "meta"}
    c = {"c_crossattn": torch.empty(rows, TEXT_TOKENS[name], width, **meta), "y": torch.empty(rows, pooled, **meta),
         "transformer_options": {"cond_or_uncond": cou, **(extra_options or {})}}
    if name.startswith("flux"):
        c["guidance"] = torch.empty(rows, **meta)
    return torch.empty(rows, dit_build.LATENT_CHANNELS, side, side, **meta), torch.empty(rows, **meta), c


def counts(name: str, side: int, settings) -> list[tuple[str, int, int, int]]:
    """[(cfg label, vanilla, SEG with the forked main pass, SEG with a separate pass)] FLOPs of one step."""
    import conduit_pack.patches.seg.guidance as seg
    import conduit_pack.patches.seg.fork as fork_mod
    from conduit_pack.patches.engine.dit_attention import call_layout, LAYOUT_KEY, options_with_block
    from conduit_pack.patches.engine.host import ApplyCall
    from conduit_pack.patches.seg.dit_blur import dit_blur_op
    from conduit_pack.toyworld import dit_build

    from .meta_unet import flops

    patcher = dit_build.build_dit(name, device="meta")
    base = patcher.model
    layers = seg.seg_layers(patcher, settings)
    keys = [layer.key[:2] for layer in layers]
    dit = base.diffusion_model
    model = types.SimpleNamespace(diffusion_model=dit, model_config=base.model_config,
                                  model_sampling=types.SimpleNamespace(calculate_denoised=lambda s, out, x: x - out))

    def run(x, t, c):
        c = dict(c)
        opts = dict(c.pop("transformer_options"))
        opts[LAYOUT_KEY] = call_layout(base, x, c)
        return dit(x, t, context=c["c_crossattn"], y=c["y"], guidance=c.get("guidance"), transformer_options=opts)

    out = []
    for label, cou in (("> 1", [1, 0]), ("= 1", [0])):
        vanilla = flops(lambda: run(*_inputs(name, len(cou), side, cou)))
        fork = fork_mod.PrefixFork("flops", keys[0], [(k[0], k[1], 0) for k in keys],
                                   lambda n, n2, f: dit_blur_op(settings.sigma, n, n2, f), lambda m, s: True, dit=True)
        x, t, c = _inputs(name, len(cou), side, cou)
        call = ApplyCall(x, t, c, model, run)
        slices = [s for k, s in fork_mod.chunk_slices(len(cou), cou) if k == 0]
        sink_before = fork.state.at(1.0).calls
        forked = flops(lambda: fork._fork(call, 1.0, cou, slices, None))
        assert fork.state.at(1.0).calls == sink_before + 1, "the fork did not take place"
        mo = {"transformer_options": {}}
        for k in keys:
            mo = options_with_block(mo, k, dit_blur_op(settings.sigma))
        extra = flops(lambda: run(*_inputs(name, 1, side, [0], mo["transformer_options"])))
        out.append((label, vanilla, forked, vanilla + extra))
    return out


def ratios(name: str, side: int, settings) -> list[tuple[str, float, float]]:
    """[(cfg label, forked-main-pass ratio, separate-pass ratio)]."""
    with meta_dit_attention():
        return [(label, f / v, s / v) for label, v, f, s in counts(name, side, settings)]


@contextlib.contextmanager
def meta_dit_attention():
    """ComfyUI's plain PyTorch attention (the one of its kernels that runs on meta tensors) wherever the DiT
    modules imported optimized_attention by name."""
    import comfy.ldm.flux.math as flux_math
    import comfy.ldm.modules.attention as cattn
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

    saved = [(m, m.optimized_attention) for m in (cattn, flux_math, mmdit)]
    for m, _ in saved:
        m.optimized_attention = cattn.attention_pytorch
    try:
        yield
    finally:
        for m, fn in saved:
            m.optimized_attention = fn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dit_flops")
    p.add_argument("--latent", type=int, default=128, help="square latent side (128 = 1024x1024)")
    p.add_argument("--topology", nargs="+", default=list(TOPOLOGIES), choices=list(TOPOLOGIES))
    args = p.parse_args(argv)
    import_host(find_host())
    from conduit.pack import import_pack

    import_pack(run_init=False)
    import conduit_pack.patches.seg.guidance as seg

    print("| model | latent | cfg | SEG layers | sigma | SEG forked main pass | separate extra pass |\n"
          "|---|---|---|---|---|---|---|")
    for name in args.topology:
        for sigma in (-1.0, 10.0):
            settings = seg.SegSettings(scale=3.0, sigma=sigma)
            for label, forked, separate in ratios(name, args.latent, settings):
                print(f"| {TOPOLOGIES[name]} | {args.latent * 8}x{args.latent * 8} | {label} | auto | "
                      f"{'inf' if sigma < 0 else f'{sigma:g}'} | {forked:.4f} | {separate:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
