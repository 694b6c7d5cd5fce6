"""SOW dynamic attention modulation node (Selective One-Way Diffusion, arXiv 2411.19182).

The paper lost its equations; the bias, decays and indicator here are Conduit's own design (docs/cow_sow.md).
"""
from __future__ import annotations

from ..patches.sow import sow_math as sm
from ..patches.engine.errors import ConduitError
from ..patches.engine.layers import model_family
from ..patches.sow.modulation import SowConfig, apply_sow
from ._declare import conduit_node

NODE = "Conduit SOW Attention"
KINDS = ("unet", "dit")


@conduit_node(NODE)
class ConduitSOWAttention:
    DESCRIPTION = ("SOW dynamic attention modulation on self-attention: suppresses attention from the condition "
                   "region to the rest (keeps it pure) and enhances attention from the condition-related region "
                   "to the condition (lets it absorb the condition), with time and distance decay and an "
                   "indicator that backs off when the related region already attends to the condition. Under the "
                   "COW sampler it acts inside cycles. Conduit's own design: the paper's equations are lost. "
                   "Takes SD1.x, SD2.x and SDXL UNets and SD3/SD3.5 and Flux DiTs; on those the same bias acts on "
                   "the image-to-image part of the joint attention, and image-to-text attention is kept.")
    CATEGORY = "conduit/cow"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the modulation on its self-attention layers (the input model is unchanged).",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        d = sm.SowParams()
        return {"required": {
            "model": ("MODEL", {"tooltip": "SD1.x, SD2.x or SDXL model."}),
            "seed": ("COW_SEED", {"tooltip": "Seed geometry from Conduit COW Seed Canvas: the condition region."}),
            "suppress": ("FLOAT", {"default": d.suppress, "min": 0.0, "max": 50.0, "step": 0.1,
                                   "tooltip": "lambda_s: logit penalty on condition -> non-condition attention. "
                                              f"Default {d.suppress} (Conduit design, not from the paper)."}),
            "enhance": ("FLOAT", {"default": d.enhance, "min": 0.0, "max": 50.0, "step": 0.1,
                                  "tooltip": "lambda_e: logit bonus on related -> condition attention. "
                                             f"Default {d.enhance}. Needs related_box."}),
            "time_decay": ("FLOAT", {"default": d.time_decay, "min": 0.0, "max": 20.0, "step": 0.1,
                                     "tooltip": "Rate of w_t = exp(-rate * u), u = cycle / cycles under COW, else "
                                                f"sampling progress 0-1. Default {d.time_decay}; 0 = constant."}),
            "time_cutoff": ("FLOAT", {"default": d.time_cutoff, "min": 0.0, "max": 1.0, "step": 0.05,
                                      "tooltip": "No modulation once u passes this. Default 1.0 (never cut)."}),
            "distance_tau": ("FLOAT", {"default": d.distance_tau, "min": 0.01, "max": 10.0, "step": 0.01,
                                       "tooltip": "Distance decay w_d = exp(-d / tau), d = distance to the condition "
                                                  "centre in units of the image's longer side. "
                                                  f"Default {d.distance_tau}."}),
            "threshold": ("FLOAT", {"default": d.threshold, "min": 0.0, "max": 100.0, "step": 0.1,
                                    "tooltip": "Indicator gate: attention the nearest related points already pay to "
                                               "the condition, relative to uniform attention. At or above this the "
                                               f"modulation backs off. Default {d.threshold}; 0 = always modulate."}),
            "near_fraction": ("FLOAT", {"default": d.near_fraction, "min": 0.01, "max": 1.0, "step": 0.01,
                                        "tooltip": "Share of related points closest to the condition that the "
                                                   "indicator reads (paper: one fifth). Default 0.2."}),
            "gate": (["soft", "hard"], {"default": d.gate,
                                        "tooltip": "soft: scale by 1 - I/threshold; hard: on/off at the threshold."}),
            "apply_to": (["cond and uncond", "cond only"], {"default": "cond and uncond",
                                                            "tooltip": "Which CFG branches are modulated."}),
            "phases": (["cycles only", "all steps"], {"default": "cycles only",
                                                      "tooltip": "Under the COW sampler: modulate only inside "
                                                                 "cycles (SOW), or also in inversion and final pass."}),
            "layers": ("STRING", {"default": "all",
                                  "tooltip": "'all' self-attention layers, or short names from Conduit Model "
                                             "Layers (e.g. i4.0, m0.0; on SD3/Flux blocks d7, s0-3). No dense "
                                             "bias is ever built."}),
        }, "optional": {
            "related_box": ("CONDUIT_BOX", {"tooltip": "Condition-related region (MLLM stage 3 or Conduit Box). "
                                                       "Without it only suppression acts."}),
        }}

    def patch(self, model, seed, suppress, enhance, time_decay, time_cutoff, distance_tau, threshold, near_fraction,
              gate, apply_to, phases, layers, related_box=None):
        model_family(model, NODE, KINDS)
        if related_box is not None and (related_box["w"] <= 0 or related_box["h"] <= 0):
            raise ConduitError(NODE, f"related_box {related_box} is empty.", "give it a positive width and height.")
        params = sm.SowParams(suppress, enhance, time_decay, time_cutoff, distance_tau, threshold, near_fraction, gate)
        hw = tuple(seed.canvas_latent_mask.shape)
        related = None if related_box is None else sm.box_mask(related_box, hw)
        if related is not None and float(related.sum()) == 0:
            raise ConduitError(NODE, f"related_box {related_box} lies outside the canvas.",
                               "move the box onto the canvas.")
        config = SowConfig(params, seed.canvas_latent_mask.float(), related, apply_to == "cond only",
                           phases == "cycles only")
        return (apply_sow(model, config, layers, NODE),)
