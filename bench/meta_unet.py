"""The full SDXL UNet on the meta device, for load-independent FLOP counts of one UNet call (no weights).

Used by the FLOP scripts (`bench.seg_flops`, `bench.cb_flops`): torch's FlopCounterMode counts what a call
would compute without computing it, so the 1024² topology can be counted on any CPU in seconds.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch


def sdxl_full_meta_unet() -> Any:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from conduit_pack.toyworld import build

    cfg = dict(build._model_config("sdxl_full").unet_config)
    cfg.update(device="meta", operations=comfy.ops.disable_weight_init, dtype=torch.float32)
    return UNetModel(**cfg)


def flops(fn: Callable[[], Any]) -> int:
    """What fn computes, counted by torch (any device; also used on real models by the timed cases)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def unet_call(unet: Any) -> Callable[..., torch.Tensor]:
    """apply(x, t, **c) on the bare UNet, the form ComfyUI's apply_model wrappers call."""
    def apply(x, t, c_crossattn=None, y=None, control=None, transformer_options=None, **_):
        return unet(x, t, context=c_crossattn, y=y, control=control, transformer_options=transformer_options)
    return apply


def inputs(rows: int, side: int, options: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Meta x, timestep and SDXL conditioning for `rows` rows of a square latent."""
    meta = {"device": "meta"}
    return (torch.empty(rows, 4, side, side, **meta), torch.empty(rows, **meta),
            {"c_crossattn": torch.empty(rows, 77, 2048, **meta), "y": torch.empty(rows, 2816, **meta),
             "transformer_options": options})


@contextlib.contextmanager
def meta_attention() -> Iterator[None]:
    """ComfyUI's plain PyTorch attention, the only one of its kernels that runs on meta tensors."""
    import comfy.ldm.modules.attention as cattn

    saved = cattn.optimized_attention
    cattn.optimized_attention = cattn.attention_pytorch
    try:
        yield
    finally:
        cattn.optimized_attention = saved
