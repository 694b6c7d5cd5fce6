"""Conduit Model Layers: list a model's attention layers, their keys and token grids."""
from __future__ import annotations

from ..patches.engine.families import DIT, family_of
from ..patches.engine.layers import attention_layers
from ._declare import conduit_node

NODE = "Conduit Model Layers"
KINDS = ("unet", "dit")


@conduit_node(NODE)
class ConduitModelLayers:
    DESCRIPTION = ("Lists every attention layer of a model with its token grid at the given image size. SD1.x, "
                   "SD2.x and SDXL UNets: ComfyUI (block, id, index) keys, short names i4.1, m0.3, o2.0. SD3/SD3.5 "
                   "and Flux DiTs: one joint-attention layer per block, short names d7 (SD3 joint / Flux double "
                   "block 7) and s0 (Flux single block 0). Use the short names in Conduit's layer lists.")
    CATEGORY = "conduit/utils"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("layers",)
    OUTPUT_TOOLTIPS = ("One line per attention layer: short name, key, token grid h x w, heads x head size.",)
    FUNCTION = "list_layers"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL UNet, or an SD3/SD3.5 or Flux DiT."}),
            "width": ("INT", {"default": 1024, "min": 8, "max": 16384, "step": 8,
                              "tooltip": "Image width in pixels, to report each layer's token grid. Default 1024."}),
            "height": ("INT", {"default": 1024, "min": 8, "max": 16384, "step": 8,
                               "tooltip": "Image height in pixels. Default 1024."}),
        }}

    def list_layers(self, model, width: int, height: int):
        family = family_of(model, NODE, KINDS)
        latent = (height // 8, width // 8)
        layers = attention_layers(model, NODE, KINDS)
        if family.kind == DIT:
            patch = family.patch_size(model.model.diffusion_model)
            h, w = layers[0].grid(latent) if layers else (0, 0)
            lines = [f"{family.name} DiT, latent {latent[1]}x{latent[0]}, patch {patch}: {h}x{w} = {h * w} image "
                     "tokens after the text tokens in every joint attention"]
        else:
            lines = [f"{family.name} UNet, latent {latent[1]}x{latent[0]}"]
        for layer in layers:
            h, w = layer.grid(latent)
            lines.append(f"{layer.short:7s} {layer.key} grid {h}x{w} heads {layer.heads}x{layer.dim_head}"
                         + (" +cross" if layer.has_cross else ""))
        text = "\n".join(lines)
        return {"ui": {"text": [text]}, "result": (text,)}
