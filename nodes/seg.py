"""Conduit Smoothed Energy Guidance: MODEL -> MODEL with the SEG guidance term added after CFG."""
from __future__ import annotations

from ..patches.seg.guidance import NODE, SegSettings, apply_seg
from ..patches.engine.layer_select import ALL_PRESETS
from ._declare import conduit_node

PAPER = "Smoothed Energy Guidance (Hong, NeurIPS 2024, arXiv 2408.00760)"


@conduit_node(NODE)
class ConduitSmoothedEnergyGuidance:
    DESCRIPTION = (
        "Smoothed Energy Guidance: runs the positive prompt once more with Gaussian-blurred self-attention "
        "queries on the chosen layers and adds scale * (cond - cond_blurred) after CFG, which sharpens "
        "structure and detail. Works with or without CFG (cfg 1, e.g. Flux with FluxGuidance). SD1.x, SD2.x "
        "and SDXL UNets (the extra pass shares the UNet up to the first blurred layer with the normal pass), "
        "SD3/SD3.5 and Flux (the image tokens' queries of the chosen blocks' joint attention are blurred on "
        f"the image grid; text tokens are untouched). From {PAPER}.")
    CATEGORY = "conduit/guidance"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with SEG added to its sampling; the input model is not changed.",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x, SDXL, SD3/SD3.5 or Flux model to guide."}),
            "scale": ("FLOAT", {
                "default": 3.0, "min": 0.0, "max": 100.0, "step": 0.1,
                "tooltip": "SEG guidance scale: the output gets + scale * (cond - cond_blurred). Default 3.0 "
                           "(the paper keeps it at 3 and controls strength with blur_sigma). 0 turns SEG off."}),
            "blur_sigma": ("FLOAT", {
                "default": -1.0, "min": -1.0, "max": 10000.0, "step": 0.01,
                "tooltip": "Gaussian blur of the queries, in tokens of each layer's grid. -1 (default, as in "
                           "the official code) = infinite: every query becomes its image's mean. Any negative "
                           "value or a value above 9999 also means infinite. 0 = no blur "
                           "(SEG has no effect). The paper sweeps 1, 2, 5, 10 and infinite; larger is "
                           "stronger."}),
            "start_percent": ("FLOAT", {
                "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                "tooltip": "Sampling progress where SEG starts (0 = first step), like ComfyUI's other percent "
                           "inputs. Default 0."}),
            "end_percent": ("FLOAT", {
                "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                "tooltip": "Sampling progress where SEG stops (1 = last step). Default 1. Outside the range "
                           "no extra pass runs."}),
            "layers": (["auto", *ALL_PRESETS, "custom"], {
                "default": "auto",
                "tooltip": "Which self-attention layers get blurred queries. auto (default): the model "
                           "family's default: on UNets the mid block, as in the official code; on SD3/SD3.5 "
                           "joint blocks 7-9, on Flux single block 0 (docs/seg.md says why). UNets: middle, "
                           "output, input; DiTs: double (SD3's joint blocks, Flux's double blocks), single "
                           "(Flux); all; or custom to use custom_layers."}),
            "custom_layers": ("STRING", {
                "default": "", "multiline": False,
                "tooltip": "Only with layers = custom: comma-separated layers. UNets: e.g. 'm0,o1.2,i4-5' "
                           "(i/m/o = input/middle/output block, then the block number or range, then an "
                           "optional .depth or .depth range). DiTs: e.g. 'd7-9,s0' (d = double or SD3 joint "
                           "block, s = Flux single block, then the number or range). 'Conduit Model Layers' "
                           "lists the names. Default empty."}),
            "rescale": ("FLOAT", {
                "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Guidance rescale (Lin et al.), as the official SEG pipeline's guidance_rescale: "
                           "pulls the guided prediction's spread back towards the positive prediction's. "
                           "0 (default) = off, 1 = full."}),
        }}

    def patch(self, model, scale: float, blur_sigma: float, start_percent: float, end_percent: float,
              layers: str, custom_layers: str, rescale: float):
        settings = SegSettings(scale=scale, sigma=blur_sigma, start_percent=start_percent, end_percent=end_percent,
                               rescale=rescale, layers=layers, custom_layers=custom_layers)
        return (apply_seg(model, settings, NODE),)
