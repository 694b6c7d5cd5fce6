"""Test-only ComfyUI nodes (never shipped): loaders for seeded random-weight tiny models.

Server tests swap a workflow's CheckpointLoaderSimple / ControlNetLoader for these before submitting.
"""
from __future__ import annotations

import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if _REPO not in sys.path:
    sys.path.append(_REPO)

from toymodel import build  # noqa: E402

from .foreign_pack import ConduitTestShortKeyPAG  # noqa: E402

FAMILIES = ["sdxl", "sd15"]


class ConduitTestTinyCheckpoint:
    CATEGORY = "conduit/testing"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (FAMILIES,), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    def load(self, family: str, seed: int):
        b = build.build_bundle(family, seed)
        return (b.model, b.clip, b.vae)


class ConduitTestTinyControlNet:
    CATEGORY = "conduit/testing"
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (FAMILIES,), "seed": ("INT", {"default": 3, "min": 0, "max": 2**31})}}

    def load(self, family: str, seed: int):
        return (build.build_controlnet(family, seed),)


NODE_CLASS_MAPPINGS = {"ConduitTestTinyCheckpoint": ConduitTestTinyCheckpoint,
                       "ConduitTestTinyControlNet": ConduitTestTinyControlNet,
                       "ConduitTestShortKeyPAG": ConduitTestShortKeyPAG}
