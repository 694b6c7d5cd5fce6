"""Conduit Demo Toy Model: the tiny text-to-image model trained on the toy world (demo only)."""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from ..patches.engine.errors import ConduitError
from ..toyworld.demo_inputs import DEMO_INPUTS, draw
from ._declare import conduit_node

log = logging.getLogger(__name__)

NODE = "Conduit Demo Toy Model (demo only)"
CONTROLNET_NODE = "Conduit Demo Toy ControlNet (demo only)"


def load_or_explain(load: Callable[[], Any], node: str, what: str, script: str) -> Any:
    try:
        return load()
    except FileNotFoundError as exc:
        raise ConduitError(node, f"the {what} are missing ({exc})",
                           f"reinstall the pack, or run {script} to train them") from exc


@conduit_node(NODE)
class ConduitDemoToyModelLoader:
    DESCRIPTION = ("DEMO ONLY. Loads Conduit's toy model: a tiny SD1.5-shaped UNet, VAE and text encoder trained "
                   "on CPU on procedural 64x64 images of one textured shape on a plain or procedural background "
                   "(captions like 'a red striped star on a gray background', or without the style or background "
                   "words). It makes the pack's effects visible and measurable without downloading real weights; it "
                   "is not a general image model: small, soft images that get the asked-for colour and background "
                   "about nine times in ten, the shape about three in four and the texture less than half the time "
                   "(see docs/toy_world.md). "
                   "Use 64x64 images "
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
        from ..toyworld import demo_model as toy

        bundle = load_or_explain(toy.load_toy_bundle, NODE, "toy weights", "scripts/train_toy.py")
        log.info("Conduit: loaded the demo toy model (%s)", toy.read_recipe().get("unet", {}))
        return (bundle.model, bundle.clip, bundle.vae)


@conduit_node(CONTROLNET_NODE)
class ConduitDemoToyControlNetLoader:
    DESCRIPTION = ("DEMO ONLY. Loads the ControlNet trained for Conduit's toy model (Conduit Demo Toy Model): its hint "
                   "is a 64x64 silhouette, the shape drawn white on black, and it places the generated shape there. "
                   "Use it with the core Apply ControlNet nodes on the toy model only; see docs/toy_world.md.")
    CATEGORY = "conduit/demo"
    RETURN_TYPES = ("CONTROL_NET",)
    RETURN_NAMES = ("control_net",)
    OUTPUT_TOOLTIPS = ("The toy ControlNet, for Apply ControlNet with a white-on-black silhouette image as hint.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        from ..toyworld import demo_model as toy

        return (load_or_explain(toy.load_toy_controlnet, CONTROLNET_NODE, "toy ControlNet weights",
                                "scripts/train_toy.py --stage controlnet"),)


IMAGE_NODE = "Conduit Demo Toy Image (demo only)"


@conduit_node(IMAGE_NODE)
class ConduitDemoToyImage:
    DESCRIPTION = ("DEMO ONLY. Draws one of the demo toy model's input images with the toy world, so the toy "
                   "templates run as they open with no file to put into ComfyUI's input folder: a style reference "
                   "for Balanced Style, a speckled condition for COW, a silhouette hint for the toy ControlNet, a "
                   "scene background for Grad-SAM. Use them with Conduit Demo Toy Model only; see docs/toy_world.md.")
    CATEGORY = "conduit/demo"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The picture as an IMAGE (a batch of one), as Load Image would give it.",)
    FUNCTION = "draw"

    @classmethod
    def INPUT_TYPES(cls):
        names = list(DEMO_INPUTS)
        return {"required": {"image": (names, {
            "default": names[0],
            "tooltip": f"Which picture to draw (default {names[0]}): "
                       + "; ".join(f"{name}, {item.what}" for name, item in DEMO_INPUTS.items()) + "."})}}

    def draw(self, image: str):  # the input guard has already checked the choice
        return (torch.from_numpy(draw(image)).float().div(255.0)[None],)
