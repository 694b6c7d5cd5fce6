"""Conduit Model Layers: list a model's attention layers, their keys and token grids."""
from __future__ import annotations

from ..patches.engine.families import FAMILY_NAMES
from ..patches.engine.layers import attention_layers, model_family
from ._declare import conduit_node

NODE = "Conduit Model Layers"


@conduit_node(NODE)
class ConduitModelLayers:
    DESCRIPTION = ("Lists every attention layer of an SD1.x, SD2.x or SDXL UNet as ComfyUI (block, id, index) "
                   "keys with its token grid at the given latent size. Use the short names (i4.1, m0.3, o2.0) "
                   "in Conduit's layer lists.")
    CATEGORY = "conduit/utils"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("layers",)
    OUTPUT_TOOLTIPS = ("One line per attention layer: short name, key, grid h x w, heads x head size.",)
    FUNCTION = "list_layers"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL model."}),
            "width": ("INT", {"default": 1024, "min": 8, "max": 16384, "step": 8,
                              "tooltip": "Image width in pixels, to report each layer's token grid. Default 1024."}),
            "height": ("INT", {"default": 1024, "min": 8, "max": 16384, "step": 8,
                               "tooltip": "Image height in pixels. Default 1024."}),
        }}

    def list_layers(self, model, width: int, height: int):
        family = model_family(model, NODE)
        latent = (height // 8, width // 8)
        lines = [f"{FAMILY_NAMES[family]} UNet, latent {latent[1]}x{latent[0]}"]
        for layer in attention_layers(model, NODE):
            h, w = layer.grid(latent)
            lines.append(f"{layer.short:7s} {layer.key} grid {h}x{w} heads {layer.heads}x{layer.dim_head}"
                         + (" +cross" if layer.has_cross else ""))
        text = "\n".join(lines)
        return {"ui": {"text": [text]}, "result": (text,)}
