"""Apply a LoRA only inside the transformer blocks of chosen self-attention layers (B-LoRA-style splitting).

ComfyUI's own LoRA path does the loading (key map, every LoRA format it knows, alpha handling); the patches it
produces are then kept only for weights inside the selected layers' BasicTransformerBlocks (UNets) or the
selected DiT blocks (SD3's joint_blocks.<i>, Flux's double_blocks.<i> / single_blocks.<i>: every weight of the
block, both streams' attention and MLP; ComfyUI maps diffusers, kohya and OneTrainer SD3/Flux LoRA keys onto
those weights, fused qkv slices included).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from . import style_math
from ..engine.safe_files import MAX_LORA_BYTES, load_safetensors, refuse_unless_safetensors
from ..tables import SensitivityTable

NODE = "Conduit Selective LoRA"

log = logging.getLogger(__name__)

MODES = ("style layers", "content layers")


LORA_FIX = ("pick a complete .safetensors LoRA from models/loras (download it again if it was cut short; convert "
            ".pt/.ckpt files to .safetensors with a tool you trust).")


def check_lora_name(name: str, node: str) -> str:
    """The LoRA's list name, when it names a .safetensors/.sft file; pickles (.pt, .ckpt, ...) are refused."""
    return refuse_unless_safetensors(name, node, "LoRA file")


def load_lora_file(path: str, node: str) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA .safetensors file, after safe_files has checked it; never unpickles.

    Only regular files of at most MAX_LORA_BYTES; the header length, header JSON and every tensor's byte
    range are checked before the safetensors library reads the file; its errors become ConduitErrors."""
    return load_safetensors(path, node, "LoRA file", LORA_FIX, max_bytes=MAX_LORA_BYTES)


def static_style_layers(table: SensitivityTable, strength: float) -> list[tuple]:
    """The union of the top int(lambda_S * L) layers by q and by k, ranked by the mean score over timesteps.

    A LoRA weight cannot change per step, so the per-timestep rows are averaged first."""
    n = style_math.style_layer_count(strength, table.num_layers)
    chosen: list[int] = []
    for feature in ("q", "k"):
        if feature in table.scores:
            for i in style_math.top_indices(table.scores[feature].mean(dim=0), n):
                if i not in chosen:
                    chosen.append(i)
    return [table.layer_keys[i] for i in sorted(chosen)]


KINDS = ("unet", "dit")


def layer_weight_prefixes(model_patcher: Any, keys: list[tuple]) -> list[str]:
    """State-dict prefixes of the layers: "diffusion_model.<blocks>.<id>.<pos>.transformer_blocks.<index>." on
    UNets, "diffusion_model.<stack>.<id>." on DiTs."""
    from ..engine.families import family_of

    family = family_of(model_patcher, NODE, KINDS)
    return [family.weight_prefix(model_patcher.model.diffusion_model, key) for key in keys]


def load_unet_patches(model_patcher: Any, lora_sd: dict[str, torch.Tensor]) -> dict:
    """ComfyUI's LoRA patches for the UNet: {model weight key (or (key, ...) tuple): patch}."""
    import comfy.lora

    from ..engine.host import convert_lora

    key_map = comfy.lora.model_lora_keys_unet(model_patcher.model, {})
    return comfy.lora.load_lora(convert_lora(lora_sd), key_map)


def _weight_name(key: Any) -> str:
    return key[0] if isinstance(key, tuple) else key


def filter_patches(patches: dict, prefixes: list[str], keep_inside: bool) -> dict:
    """Patches whose weight lies inside (keep_inside) or outside the given transformer blocks."""
    def inside(key: Any) -> bool:
        name = _weight_name(key)
        return any(name.startswith(p) for p in prefixes)

    return {k: v for k, v in patches.items() if inside(k) == keep_inside}


def apply_selective_lora(model_patcher: Any, lora_sd: dict[str, torch.Tensor], strength: float,
                         layer_keys: list[tuple], node: str) -> tuple[Any, int]:
    """(patched clone, number of patched weights); the input model itself when nothing matches."""
    patches = load_unet_patches(model_patcher, lora_sd)
    if not patches:
        log.warning("%s: the LoRA has no weights that match this model's UNet; the model is returned unchanged.",
                    node)
        return model_patcher, 0
    prefixes = layer_weight_prefixes(model_patcher, layer_keys)
    selected = filter_patches(patches, prefixes, keep_inside=True)
    if not selected:
        log.warning("%s: none of the LoRA's %d UNet weights lie in the %d selected attention layers; the model is "
                    "returned unchanged.", node, len(patches), len(layer_keys))
        return model_patcher, 0
    m = model_patcher.clone()
    added = m.add_patches(selected, strength)
    log.info("%s: applied %d of %d LoRA weights (%d layers).", node, len(added), len(patches), len(layer_keys))
    return m, len(added)
