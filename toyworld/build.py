"""Build small SD1.5- and SDXL-shaped models from ComfyUI's own classes.

Used by the demo loader (with trained toy weights) and by the tests (with seeded random weights).
Every Conduit patch sees the real ComfyUI UNet, CLIP and VAE code paths, only smaller.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

_COMMON_UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# Self-attention sits at input 1, 3; middle 0; output 2..5 (grids 1/1, 1/2, 1/4 of the latent).
SD15_UNET = {
    **_COMMON_UNET,
    "model_channels": 32,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": [1, 1, 1],
    "transformer_depth": [1, 1, 0],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 0, 0],  # popped from the end: output 2..5
    "context_dim": 64,
    "adm_in_channels": None,
    "use_linear_in_transformer": False,
}

# The demo toy model's UNet (toy world v2): SD1.5's block types with one down-sampling level less, so on
# 8x8 latents the attention grids are 8x8 (input 1, output 2..3) and 4x4 (input 3, middle 0, output 0..1):
# SEG's default middle block has a 4x4 token grid to blur. 64 channels at both levels (1.7 M parameters).
TOY_SD15_UNET = {
    **SD15_UNET,
    "model_channels": 64,
    "channel_mult": [1, 1],
    "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1],
}

# SD2.x-shaped: linear projections in the transformers, v-prediction like SD2.1-768.
SD2_UNET = {**SD15_UNET, "use_linear_in_transformer": True}


def sdxl_unet(channels: int, channel_mult: list[int], res_blocks: int, depth: int, depth_low: int, context_dim: int,
              adm_in_channels: int, **extra: Any) -> dict:
    """An SDXL-shaped UNet config: SDXL's transformer depth lists with its depths 2 and 10 replaced by `depth`
    and `depth_low`. ComfyUI takes one entry per block (inputs from the front, outputs from the back), so with
    one res block per level the entries land on other levels than in SDXL."""
    return {
        **_COMMON_UNET,
        "model_channels": channels,
        "channel_mult": channel_mult,
        "num_res_blocks": [res_blocks] * 3,
        "transformer_depth": [0, 0, depth, depth, depth_low, depth_low],
        "transformer_depth_middle": depth_low,
        "transformer_depth_output": [0, 0, 0] + [depth] * 3 + [depth_low] * 3,
        "context_dim": context_dim,
        "adm_in_channels": adm_in_channels,
        "use_linear_in_transformer": True,
        "num_classes": "sequential",
        **extra,
    }


# The recipe from the project's test-host notes: attention at input 5, middle 0, output 0..5.
SDXL_UNET = sdxl_unet(channels=32, channel_mult=[1, 2, 2], res_blocks=1, depth=1, depth_low=1, context_dim=64,
                      adm_in_channels=32 + 6 * 256)

# Full-size SDXL topology (random weights) for timing only.
SDXL_FULL_UNET = sdxl_unet(channels=320, channel_mult=[1, 2, 4], res_blocks=2, depth=2, depth_low=10,
                           context_dim=2048, adm_in_channels=2816, image_size=128)

FAMILIES = {"sd15": SD15_UNET, "sd2": SD2_UNET, "sdxl": SDXL_UNET, "sdxl_full": SDXL_FULL_UNET,
            "toy_sd15": TOY_SD15_UNET}
HEAD_CHANNELS = {"sd15": 16, "sd2": 16, "sdxl": 16, "sdxl_full": 64, "toy_sd15": 16}
# Topologies that ComfyUI builds with its SD1.5 classes (the rest: SD2.x or SDXL).
SD15_CLASS = ("sd15", "toy_sd15")
POOLED_DIM = {"sdxl": 32, "sdxl_full": 1280}

TINY_VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
    "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}


@dataclass
class TinyBundle:
    model: Any  # comfy.model_patcher.ModelPatcher
    clip: Any  # comfy.sd.CLIP or None
    vae: Any  # comfy.sd.VAE or None


def seeded_init_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Deterministic fan-in init: ComfyUI's ops skip init, so weights would be uninitialized memory."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith("bias") or "bias" in name.rsplit(".", 1)[-1]:
                p.zero_()
            elif "norm" in name or name.endswith(".weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return module


def _model_config(family: str):
    import comfy.supported_models as sm

    unet = dict(FAMILIES[family])
    cls = sm.SD15 if family in SD15_CLASS else {"sd2": sm.SD20}.get(family, sm.SDXL)
    mc = cls(unet)
    if family == "sd2":
        import comfy.model_base

        mc.model_type = lambda state_dict, prefix="": comfy.model_base.ModelType.V_PREDICTION
    mc.unet_config.pop("num_heads", None)
    mc.unet_config["num_heads"] = -1
    mc.unet_config["num_head_channels"] = HEAD_CHANNELS[family]
    return mc


def build_unet(family: str = "sdxl", seed: int = 0, state_dict: dict | None = None,
               device: torch.device | None = None):
    """A ModelPatcher around a real ComfyUI BaseModel with the given family's topology."""
    import comfy.model_patcher

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {sorted(FAMILIES)}")
    device = device or torch.device("cpu")
    mc = _model_config(family)
    model = mc.get_model({}, "", device=device)
    if state_dict is None:
        seeded_init_(model.diffusion_model, seed)
    else:
        model.diffusion_model.load_state_dict(state_dict, strict=True)
    model.diffusion_model.to(device)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def _tiny_sdxl_clip_class():
    import comfy.sd1_clip as sd1_clip
    import comfy.sdxl_clip as sdxl_clip

    class TinySDXLClipModel(sdxl_clip.SDXLClipModel):
        def __init__(self, device: str = "cpu", dtype=None, model_options: dict | None = None):
            torch.nn.Module.__init__(self)
            extra = {} if model_options is None else {"model_options": model_options}
            self.clip_l = sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                textmodel_json_config=os.path.join(CONFIG_DIR, "clip_tiny_sdxl_l.json"), **extra)
            self.clip_g = sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                textmodel_json_config=os.path.join(CONFIG_DIR, "clip_tiny_sdxl_g.json"),
                special_tokens={"start": 49406, "end": 49407, "pad": 0}, **extra)
            self.dtypes = {dtype}

    return TinySDXLClipModel


def build_clip(family: str = "sdxl", seed: int = 0, state_dict: dict | None = None):
    """A comfy.sd.CLIP with ComfyUI's own tokenizer and a small CLIP-shaped text encoder."""
    import comfy.sd
    import comfy.sd1_clip as sd1_clip
    import comfy.sdxl_clip as sdxl_clip

    if family in (*SD15_CLASS, "sd2"):  # SD2's text encoder only differs in size, which is tiny here anyway
        clip_cls = functools.partial(
            sd1_clip.SD1ClipModel, clip_model=sd1_clip.SDClipModel,
            textmodel_json_config=os.path.join(CONFIG_DIR, "clip_tiny_sd15.json"))
        tok_cls = sd1_clip.SD1Tokenizer
    elif family == "sdxl":
        clip_cls = _tiny_sdxl_clip_class()
        tok_cls = sdxl_clip.SDXLTokenizer
    else:
        raise ValueError(f"no tiny text encoder for family {family!r}")

    class Target:
        params: dict = {}
        clip = clip_cls
        tokenizer = tok_cls

    with torch.no_grad():  # older hosts copy into leaf parameters during construction
        clip = comfy.sd.CLIP(target=Target)
    if state_dict is None:
        seeded_init_(clip.cond_stage_model, seed)
    else:
        clip.cond_stage_model.load_state_dict(state_dict, strict=True)
    return clip


def build_vae(seed: int = 0, state_dict: dict | None = None):
    """A comfy.sd.VAE with the KL autoencoder at 32 base channels (8x down-sampling, 4 latent channels)."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    if state_dict is None:
        ae = AutoencoderKL(ddconfig=dict(TINY_VAE_DDCONFIG), embed_dim=4)
        seeded_init_(ae, seed)
        state_dict = ae.state_dict()
    return comfy.sd.VAE(sd=state_dict, config={"params": {"ddconfig": dict(TINY_VAE_DDCONFIG), "embed_dim": 4}})


def build_controlnet(family: str = "sdxl", seed: int = 0, device: torch.device | None = None):
    """A comfy.controlnet.ControlNet whose control model mirrors the tiny UNet's topology."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    device = device or torch.device("cpu")
    cfg = dict(_model_config(family).unet_config)
    for k in ("out_channels", "transformer_depth_output", "use_temporal_attention", "use_temporal_resblock"):
        cfg.pop(k, None)
    cfg.update(hint_channels=3, operations=comfy.ops.disable_weight_init, device=device, dtype=torch.float32)
    control_model = comfy.cldm.cldm.ControlNet(**cfg)
    seeded_init_(control_model, seed)
    return comfy.controlnet.ControlNet(control_model, load_device=device, manual_cast_dtype=None)


def build_bundle(family: str = "sdxl", seed: int = 0) -> TinyBundle:
    return TinyBundle(build_unet(family, seed), build_clip(family, seed + 1), build_vae(seed + 2))


def tiny_conditioning(family: str, batch: int = 1, seed: int = 0, width: int = 256, height: int = 256):
    """Random conditioning of the right shape, for tests that skip the text encoder."""
    gen = torch.Generator().manual_seed(seed)
    ctx = torch.randn(batch, 77, FAMILIES[family]["context_dim"], generator=gen)
    extra: dict = {}
    if family in POOLED_DIM:
        extra = {"pooled_output": torch.randn(batch, POOLED_DIM[family], generator=gen),
                 "width": width, "height": height, "crop_w": 0, "crop_h": 0,
                 "target_width": width, "target_height": height}
    return [[ctx, extra]]
