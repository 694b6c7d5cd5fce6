"""Load the trained toy model (demo only): one safetensors file holding unet.*, vae.* and clip.* weights.

The topology is toyworld/build.py's "toy_sd15" (SD1.5 classes), so the pack sees an SD1.5 model; images are
64x64 (8x8 latents). scripts/train_toy.py writes the file and records its recipe in the metadata.
Its toy ControlNet (hint: the shape's silhouette, white on black) is a second file, trained against one
particular toy UNet by `scripts/train_toy.py --stage controlnet`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

import torch

from . import build

log = logging.getLogger(__name__)

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "toy_sd15.safetensors")
CONTROLNET_WEIGHTS = os.path.join(os.path.dirname(WEIGHTS), "toy_controlnet.safetensors")
FAMILY = "toy_sd15"  # build.TOY_SD15_UNET: SD1.5 classes, one down-sampling level less
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


def unet_fingerprint(unet_state: dict[str, torch.Tensor]) -> str:
    """A short hash of UNet weights (fp32 values, sorted keys): ties a toy ControlNet to the UNet it was trained on."""
    h = hashlib.sha256()
    for key in sorted(unet_state):
        h.update(key.encode())
        h.update(unet_state[key].detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def shipped_unet_fingerprint(path: str | None = None) -> str:
    from safetensors.torch import load_file

    return unet_fingerprint(split_state(load_file(path or WEIGHTS))["unet"])


def load_toy_controlnet(path: str | None = None, toy_weights: str | None = None):
    """The toy ControlNet as a ComfyUI CONTROL_NET (comfy.controlnet.ControlNet), for the core Apply ControlNet
    nodes. Hint: an IMAGE of the shape's silhouette (white shape on black, 64x64, toy.world.silhouette).

    Warns when the ControlNet was trained against another UNet than the toy weights' (re-run the stage then).
    """
    from safetensors.torch import load_file

    path = path or CONTROLNET_WEIGHTS
    if not os.path.isfile(path):
        raise FileNotFoundError(f"toy ControlNet weights not found at {path}; "
                                "run scripts/train_toy.py --stage controlnet")
    with torch.inference_mode(False), torch.no_grad():
        state = {k: v.float() for k, v in load_file(path).items()}
        controlnet = build.build_controlnet(FAMILY)
        controlnet.control_model.load_state_dict(state, strict=True)
    trained_on = read_recipe(path).get("unet_fingerprint")
    toy_weights = toy_weights or WEIGHTS
    if os.path.isfile(toy_weights) and trained_on != shipped_unet_fingerprint(toy_weights):
        log.warning("the toy ControlNet %s was trained against another toy UNet than %s; re-run "
                    "scripts/train_toy.py --stage controlnet", path, toy_weights)
    return controlnet


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
