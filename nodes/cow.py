"""Cyclic One-Way Diffusion nodes: seed canvas, sigma-space inversion, cyclic one-way sampler, manual box.

Paper: Wang et al., "Diffusion in Diffusion: Cyclic One-Way Diffusion for Text-Vision-Conditioned
Generation" (ICLR 2024) and its extension "SOWing Information" (arXiv 2411.19182). Defaults follow the
official code (10 steps, 10 cycles, cycle 0.7 -> 0.5, eta 1.0 / 0.1, preservation 0.4, CFG 7.5).
"""
from __future__ import annotations

import logging

import torch

from ..patches.cow import cow_math as cm
from ..patches.cow.sampler import SAMPLER_NODE, CowSpec, cow_sampler, invert_condition
from ..patches.engine.errors import ConduitError
from ..patches.engine.layers import model_family
from ._inputs import canvas_size
from ._declare import conduit_node

log = logging.getLogger(__name__)

SEED_NODE = "Conduit COW Seed Canvas"
INVERT_NODE = "Conduit COW Invert"
BOX_NODE = "Conduit Box"
MODES = ["crop alone", "in place"]
RENOISE = ["exact", "reference-compatible"]
KINDS = ("unet", "dit")  # DiTs: SD3/SD3.5 and Flux, flow-matching latents (cow_math says how the steps carry over)


def _single(tensor: torch.Tensor | None, what: str, node: str) -> torch.Tensor | None:
    if tensor is None:
        return None
    if tensor.shape[0] != 1:
        raise ConduitError(node, f"{what} has a batch of {tensor.shape[0]}; COW uses one visual condition.",
                           f"pass a single {what} (e.g. with ImageFromBatch).")
    return tensor[0]


def resolve_box(box: dict | None, x: float, y: float, w: float, h: float, units: str, canvas_w: int,
                canvas_h: int, node: str) -> cm.PixelBox:
    """The placement box in canvas pixels on the latent grid; out-of-canvas parts are cut with a warning."""
    if box is not None:
        x, y, w, h, units = box["x"], box["y"], box["w"], box["h"], "normalized"
    px = cm.box_to_pixels(x, y, w, h, units, canvas_w, canvas_h)
    clamped, cut = cm.clamp_box(*px, canvas_w, canvas_h, node)
    if cut:
        log.warning("%s: box %s reaches outside the %dx%d canvas; clamped to %s", node,
                    tuple(round(v, 1) for v in px), canvas_w, canvas_h, tuple(round(v, 1) for v in clamped))
    return cm.snap_box(*clamped, canvas_w, canvas_h)


@conduit_node(SEED_NODE)
class ConduitCOWSeedCanvas:
    DESCRIPTION = ("COW seed initialisation: resizes the visual condition into a box and pastes it on a flat gray "
                   "canvas (the paper's neutral background). Outputs the canvas and the crop to VAE-encode, the "
                   "condition masks at latent resolution, and the seed geometry for COW Invert and SOW.")
    CATEGORY = "conduit/cow"
    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK", "MASK", "COW_SEED")
    RETURN_NAMES = ("canvas", "crop", "canvas_mask", "crop_mask", "seed")
    OUTPUT_TOOLTIPS = (
        "The seed canvas: gray everywhere except the pasted condition. VAE-encode it for the sampler.",
        "The condition resized to the box, gray where the mask drops it. VAE-encode it for 'crop alone' inversion.",
        "Condition region on the canvas at latent resolution (canvas / 8), 1 = condition.",
        "Condition region inside the crop at latent resolution (box / 8), 1 = condition.",
        "Seed geometry (box, canvas size, masks) for COW Invert and the SOW attention patch.",
    )
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The visual condition (e.g. a face photo). One image."}),
            **canvas_size("Output width in pixels, any multiple of 8. Default 512 (official).",
                          "Output height in pixels, any multiple of 8. Default 512."),
            "box_x": ("FLOAT", {"default": 128.0, "min": -16384.0, "max": 16384.0, "step": 1.0,
                                "tooltip": "Left edge of the condition box (pixels or 0-1, see box_units). "
                                           "Default 128: the official top-centre placement."}),
            "box_y": ("FLOAT", {"default": 0.0, "min": -16384.0, "max": 16384.0, "step": 1.0,
                                "tooltip": "Top edge of the condition box. Default 0."}),
            "box_w": ("FLOAT", {"default": 256.0, "min": 0.0, "max": 16384.0, "step": 1.0,
                                "tooltip": "Box width. Default 256 (official seed size). Edges snap to 8 px; "
                                           "parts outside the canvas are clamped with a warning."}),
            "box_h": ("FLOAT", {"default": 256.0, "min": 0.0, "max": 16384.0, "step": 1.0,
                                "tooltip": "Box height. Default 256."}),
            "box_units": (["pixels", "normalized"], {"default": "pixels",
                                                     "tooltip": "pixels: canvas pixels; normalized: 0-1 fractions "
                                                                "of the canvas width/height."}),
            "fit": (["stretch", "crop"], {"default": "stretch",
                                          "tooltip": "stretch: resize the image to the box (official, square 256); "
                                                     "crop: cut its centre to the box's aspect first."}),
            "gray": ("FLOAT", {"default": round(cm.GRAY, 5), "min": 0.0, "max": 1.0, "step": 0.001,
                               "tooltip": "Background value, 0-1. Default 128/255: the paper's neutral gray."}),
        }, "optional": {
            "mask": ("MASK", {"tooltip": "Which pixels of the image are the condition, ComfyUI style: 1 = keep. "
                                         "Dropped pixels become gray. Default: the whole image."}),
            "invert_mask": ("BOOLEAN", {"default": False,
                                        "tooltip": "Flip the mask, for COW-style masks where black = keep."}),
            "box": ("CONDUIT_BOX", {"tooltip": "A box from Conduit MLLM Plan or Conduit Box; overrides the box_* "
                                               "widgets when connected."}),
        }}

    def make(self, image, canvas_width, canvas_height, box_x, box_y, box_w, box_h, box_units, fit, gray,
             mask=None, invert_mask=False, box=None):
        cm.check_canvas_size(canvas_width, canvas_height, SEED_NODE)
        img = _single(image, "image", SEED_NODE)
        keep = _single(mask if mask is None or mask.dim() == 3 else mask[None], "mask", SEED_NODE)
        if keep is not None and invert_mask:
            keep = 1.0 - keep
        pbox = resolve_box(box, box_x, box_y, box_w, box_h, box_units, canvas_width, canvas_height, SEED_NODE)
        seed = cm.seed_canvas(img.cpu(), None if keep is None else keep.cpu(), pbox, canvas_width, canvas_height,
                              gray, fit)
        if seed.crop_latent_mask.sum() == 0:
            raise ConduitError(SEED_NODE, "the mask keeps no full latent cell (8x8 pixels) inside the box.",
                               "enlarge the box or the masked area, or check invert_mask.")
        return (seed.canvas[None], seed.crop[None], seed.canvas_latent_mask[None], seed.crop_latent_mask[None], seed)


@conduit_node(INVERT_NODE)
class ConduitCOWInvert:
    DESCRIPTION = ("Deterministic DDIM inversion in sigma space on the model's own schedule: walks the "
                   "condition latent from sigma 0 up the given SIGMAS and records every intermediate latent "
                   "that the cyclic sampler pastes back. Official: CFG 7.5 with the sampling prompt. Takes SD1.x, "
                   "SD2.x and SDXL UNets and SD3/SD3.5 and Flux DiTs (on those, the reversed Euler step of the "
                   "flow ODE, which is DDIM inversion for flow latents).")
    CATEGORY = "conduit/cow"
    RETURN_TYPES = ("COW_INVERSION", "LATENT")
    RETURN_NAMES = ("inversion", "inverted")
    OUTPUT_TOOLTIPS = ("Recorded condition latents for Conduit COW Cycle Sampler.",
                       "The noisiest inverted latent (crop-sized or canvas-sized), for inspection.")
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "SD1.x, SD2.x (epsilon or v-prediction) or SDXL UNet, or an SD3/SD3.5 "
                                           "or Flux DiT (flow matching); the same one the sampler uses."}),
            "positive": ("CONDITIONING", {"tooltip": "Prompt used during inversion (official: the sampling prompt)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative used during inversion (official: empty prompt)."}),
            "sigmas": ("SIGMAS", {"tooltip": "The sampling schedule; feed the same SIGMAS to SamplerCustom. "
                                             "Official: 10 steps, scheduler ddim_uniform (timesteps 901..1)."}),
            "seed": ("COW_SEED", {"tooltip": "Seed geometry from Conduit COW Seed Canvas."}),
            "mode": (MODES, {"default": "crop alone",
                             "tooltip": "crop alone: invert the crop as its own image (official); in place: invert "
                                        "the whole seed canvas, which also serves as the background seed."}),
            "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 30.0, "step": 0.1,
                              "tooltip": "CFG scale during inversion. Official 7.5; 1.0 inverts most faithfully. "
                                         "Flux (guidance-distilled): use 1.0 and FluxGuidance on the prompt."}),
            "invert_to": ("FLOAT", {"default": 0.7, "min": 0.05, "max": 1.0, "step": 0.05,
                                    "tooltip": "How far to invert, as the reference's step fraction counted from "
                                               "the clean end; must be at least the sampler's cycle_start. "
                                               "Default 0.7 (7 of 10 steps)."}),
        }, "optional": {
            "crop_latent": ("LATENT", {"tooltip": "VAE-encoded crop; needed for 'crop alone'."}),
            "canvas_latent": ("LATENT", {"tooltip": "VAE-encoded seed canvas; needed for 'in place'."}),
        }}

    def invert(self, model, positive, negative, sigmas, seed, mode, cfg, invert_to, crop_latent=None,
               canvas_latent=None):
        model_family(model, INVERT_NODE, KINDS)
        sig = [float(s) for s in sigmas.flatten().cpu()]
        n = len(sig) - 1
        if n < 1 or sig[-1] != 0.0 or any(a <= b for a, b in zip(sig[:-1], sig[1:])):
            raise ConduitError(INVERT_NODE, "sigmas must descend strictly and end at 0.",
                               "connect a BasicScheduler (or KSampler-style) schedule with denoise 1.0.")
        reached = n - cm.fraction_index(invert_to, n)
        if reached >= n:
            raise ConduitError(INVERT_NODE, f"invert_to {invert_to:g} of {n} steps inverts nothing.",
                               "raise invert_to or use more steps.")
        hw = (seed.canvas_latent_mask.shape[0], seed.canvas_latent_mask.shape[1])
        lx, ly, lw, lh = seed.box.latent
        if mode == "crop alone":
            latent, want, what = crop_latent, (lh, lw), "crop_latent"
        else:
            latent, want, what = canvas_latent, hw, "canvas_latent"
        if latent is None:
            raise ConduitError(INVERT_NODE, f"mode '{mode}' needs {what}.", f"VAE-encode the seed node's "
                               f"{'crop' if what == 'crop_latent' else 'canvas'} and connect it to {what}.")
        samples = _single(latent["samples"], what, INVERT_NODE)[None]
        if tuple(samples.shape[-2:]) != want:
            raise ConduitError(INVERT_NODE, f"{what} is {samples.shape[-1] * 8}x{samples.shape[-2] * 8} px, "
                               f"expected {want[1] * 8}x{want[0] * 8}.", "encode the image the seed node made.")
        inv, top = invert_condition(model, positive, negative, sig, samples, cfg, reached, mode, seed)
        return inv, {"samples": top}


@conduit_node(SAMPLER_NODE)
class ConduitCOWCycleSampler:
    DESCRIPTION = ("Cyclic One-Way Diffusion as a SAMPLER for SamplerCustom / SamplerCustomAdvanced: starts from "
                   "the seed canvas inverted to the cycle end, then repeatedly renoises to the cycle start and "
                   "denoises back, pasting the inverted condition inside its region after every step so "
                   "information only flows out of it; a final pass pastes it once more at the preservation step. "
                   "Use add_noise off and the VAE-encoded seed canvas as latent. Runs on the model COW Invert "
                   "used: SD1.x, SD2.x, SDXL, or SD3/SD3.5 and Flux (flow-matching steps).")
    CATEGORY = "conduit/cow"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("Connect to SamplerCustom (both hosts) or SamplerCustomAdvanced with the same SIGMAS as "
                       "COW Invert.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "inversion": ("COW_INVERSION", {"tooltip": "From Conduit COW Invert."}),
            "cycles": ("INT", {"default": 10, "min": 0, "max": 100,
                               "tooltip": "Disturb/reconstruct cycles. Official 10. 0 runs only the final pass."}),
            "cycle_start": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.05,
                                      "tooltip": "Noisy end of each cycle as a step fraction counted from the clean "
                                                 "end, as in the official code (0.7 of 10 steps = step 7)."}),
            "cycle_end": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                    "tooltip": "Clean end of each cycle (official 0.5 = step 5); the final pass "
                                               "starts here."}),
            "eta_cycle": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                    "tooltip": "DDIM eta inside cycles (official 1.0; 0.0 before May 2024)."}),
            "eta_final": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 2.0, "step": 0.05,
                                    "tooltip": "DDIM eta in the final pass (official 0.1)."}),
            "preservation": ("FLOAT", {"default": 0.4, "min": -1.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "Visual condition preservation: paste the inverted condition once "
                                                  "more after this step of the final pass (official 0.4 = step 4). "
                                                  "Lower keeps the condition more exact; negative turns it off."}),
            "renoise": (RENOISE, {"default": "exact",
                                  "tooltip": "exact: add sqrt(s_top^2 - s_end^2) noise (sigma space; on SD3/Flux "
                                             "the exact flow form, signal x(1-s_top)/(1-s_end)). "
                                             "reference-compatible: the official off-by-one formula (signal x0.89, "
                                             "noise 2.10 instead of 1.97 at the defaults); UNets only."}),
            "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "tooltip": "Seed of the renoise and eta noise. Official 42."}),
        }, "optional": {
            "suppress": ("CONDITIONING", {"tooltip": "Masked CFG: pushed away from in the background during "
                                                     "cycles (e.g. a duplicate of the subject). No default."}),
            "diversity": ("CONDITIONING", {"tooltip": "Masked CFG: pulled toward in the background during cycles "
                                                      "(e.g. 'a high quality and colorful image'). No default."}),
        }}

    def build(self, inversion, cycles, cycle_start, cycle_end, eta_cycle, eta_final, preservation, renoise, seed,
              suppress=None, diversity=None):
        spec = CowSpec(inversion, cycles, cycle_start, cycle_end, eta_cycle, eta_final, preservation, renoise, seed,
                       suppress, diversity, SAMPLER_NODE)
        plan = cm.cycle_plan(inversion.steps, cycle_start, cycle_end, preservation, cycles, SAMPLER_NODE)
        if inversion.reached > plan.top:
            raise ConduitError(SAMPLER_NODE, f"cycle_start {cycle_start:g} is above what COW Invert recorded.",
                               "raise invert_to on COW Invert to at least cycle_start.")
        cm.renoise_coefficients(inversion.sigmas, plan.bottom, plan.top, renoise, SAMPLER_NODE, inversion.flow)
        return (cow_sampler(spec),)


@conduit_node(BOX_NODE)
class ConduitBox:
    DESCRIPTION = "A box on the canvas as fractions of its width and height, for the seed canvas and SOW."
    CATEGORY = "conduit/cow"
    RETURN_TYPES = ("CONDUIT_BOX",)
    RETURN_NAMES = ("box",)
    OUTPUT_TOOLTIPS = ("Box x, y, w, h normalized to the canvas (0-1).",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        def frac(default, tip):
            return ("FLOAT", {"default": default, "min": -1.0, "max": 2.0, "step": 0.01, "tooltip": tip})
        return {"required": {
            "x": frac(0.25, "Left edge, fraction of canvas width. Default 0.25."),
            "y": frac(0.0, "Top edge, fraction of canvas height. Default 0."),
            "w": frac(0.5, "Width, fraction of canvas width. Default 0.5."),
            "h": frac(0.5, "Height, fraction of canvas height. Default 0.5."),
        }}

    def make(self, x, y, w, h):
        if w <= 0 or h <= 0:
            raise ConduitError(BOX_NODE, f"box size {w:g} x {h:g} is empty.", "give a positive width and height.")
        return ({"x": float(x), "y": float(y), "w": float(w), "h": float(h)},)
