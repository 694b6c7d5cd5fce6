"""Conduit Demo Toy Model: the tiny text-to-image model trained on the toy world (demo only)."""
from __future__ import annotations

import logging

from ..patches.errors import ConduitError

log = logging.getLogger(__name__)

NODE = "Conduit Demo Toy Model (demo only)"


class ConduitDemoToyModelLoader:
    DESCRIPTION = ("DEMO ONLY. Loads Conduit's toy model: a tiny SD1.5-shaped UNet, VAE and text encoder trained "
                   "on CPU on procedural 64x64 images of one textured shape on a plain background (captions like "
                   "'a red striped star on a gray background'). It makes the pack's effects visible and measurable "
                   "without downloading real weights; it is not a general image model, and its images are rough (blurry "
                   "shapes, mostly the asked-for background and colour; see docs/toy_world.md). Use 64x64 images "
                   "(EmptyLatentImage 64x64), cfg around 3-5, 20 steps.")
    CATEGORY = "conduit/demo"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("model", "clip", "vae")
    OUTPUT_TOOLTIPS = ("The toy UNet, seen by the pack as an SD1.5 model (64x64 images, 8x8 latents).",
                       "The toy text encoder, used through ComfyUI's CLIP Text Encode node.",
                       "The toy VAE (8x down-sampling, 4 latent channels).")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        from ..toymodel import toy

        try:
            bundle = toy.load_toy_bundle()
        except FileNotFoundError as exc:
            raise ConduitError(NODE, f"the toy weights are missing ({exc})",
                               "reinstall the pack, or run scripts/train_toy.py to train them") from exc
        log.info("Conduit: loaded the demo toy model (%s)", toy.read_recipe().get("unet", {}))
        return (bundle.model, bundle.clip, bundle.vae)


NODE_CLASS_MAPPINGS = {"ConduitDemoToyModelLoader": ConduitDemoToyModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"ConduitDemoToyModelLoader": NODE}
