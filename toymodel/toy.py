"""Load the trained toy model (demo only): one safetensors file holding unet.*, vae.* and clip.* weights.

The topology is toymodel/build.py's tiny "sd15" family, so the pack sees it as an SD1.5 model; images are
64x64 (8x8 latents). scripts/train_toy.py writes the file and records its recipe in the metadata.
"""
from __future__ import annotations

import json
import logging
import os

import torch

from . import build

log = logging.getLogger(__name__)

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "toy_sd15.safetensors")
FAMILY = "sd15"
IMAGE_SIZE = 64


def split_state(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "vae": {}, "clip": {}}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts:
            raise ValueError(f"unexpected key {key!r} in toy weights")
        parts[prefix][rest] = value.float()
    return parts


def read_recipe(path: str | None = None) -> dict:
    from safetensors import safe_open

    path = path or WEIGHTS
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("conduit_toy_recipe", "{}"))


def load_toy_bundle(path: str | None = None) -> build.TinyBundle:
    """Real ComfyUI MODEL / CLIP / VAE objects with the toy weights.

    Built outside inference mode so the weights are ordinary tensors: techniques that take gradients
    through the UNet (Abs-Grad-SAM) must work even though the current host runs nodes in inference mode.
    """
    from safetensors.torch import load_file

    path = path or WEIGHTS
    if not os.path.isfile(path):
        raise FileNotFoundError(f"toy model weights not found at {path}; run scripts/train_toy.py")
    with torch.inference_mode(False), torch.no_grad():
        parts = split_state(load_file(path))
        model = build.build_unet(FAMILY, state_dict=parts["unet"])
        clip = build.build_clip(FAMILY, state_dict=parts["clip"])
        vae = build.build_vae(state_dict=parts["vae"])
    return build.TinyBundle(model, clip, vae)
