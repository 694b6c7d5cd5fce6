"""Test-only ComfyUI nodes (never shipped): loaders for seeded random-weight tiny models.

Server tests swap a workflow's CheckpointLoaderSimple / ControlNetLoader for these before submitting.
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from .foreign_pack import ConduitTestShortKeyPAG

_REPO = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 3))


def _pack() -> ModuleType:
    """The Conduit pack as this process loaded it (ComfyUI names it after its custom_nodes folder; tests name it
    conduit_pack), so its toy world is never loaded twice under two names."""
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if path and os.path.basename(path) == "__init__.py" and \
                os.path.realpath(os.path.dirname(path)) == _REPO and hasattr(mod, "__path__"):
            return mod
    raise RuntimeError("the Conduit pack is not loaded in this process")


def _build() -> ModuleType:
    return importlib.import_module(f"{_pack().__name__}.toyworld.build")


FAMILIES = ["sdxl", "sd15"]


class ConduitTestTinyCheckpoint:
    CATEGORY = "conduit/testing"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (FAMILIES,), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    def load(self, family: str, seed: int):
        b = _build().build_bundle(family, seed)
        return (b.model, b.clip, b.vae)


DIT_TOPOLOGIES = ["flux", "sd3", "sd35l_keys"]


class ConduitTestTinyDiT:
    """A tiny seeded SD3 or Flux (ComfyUI's own classes) with a tiny text encoder and a 16-channel VAE."""
    CATEGORY = "conduit/testing"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"topology": (DIT_TOPOLOGIES,), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    def load(self, topology: str, seed: int):
        b = importlib.import_module(f"{_pack().__name__}.toyworld.dit_build").build_dit_bundle(topology, seed)
        return (b.model, b.clip, b.vae)


class ConduitTestTinyControlNet:
    CATEGORY = "conduit/testing"
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (FAMILIES,), "seed": ("INT", {"default": 3, "min": 0, "max": 2**31})}}

    def load(self, family: str, seed: int):
        return (_build().build_controlnet(family, seed),)


class ConduitTestTinyDiTControlNet:
    """A tiny seeded SD3 / SD3.5 / Flux ControlNet (ComfyUI's own classes) for the tiny DiTs."""
    CATEGORY = "conduit/testing"
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["sd3", "sd35", "flux"],),
                             "seed": ("INT", {"default": 1, "min": 0, "max": 2**31})}}

    def load(self, kind: str, seed: int):
        module = importlib.import_module(f"{_pack().__name__}.toyworld.dit_controlnet")
        return (module.build_dit_controlnet(kind, seed),)


class AnyType(str):
    """A socket type that every type matches (ComfyUI compares types with !=; this side always answers equal)."""

    def __ne__(self, other: object) -> bool:
        return False


class ConduitTestSink:
    """An output node for any socket, so the sweep can run a node whose output no core node consumes."""
    CATEGORY = "conduit/testing"
    RETURN_TYPES = ()
    FUNCTION = "take"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (AnyType("*"),)}}

    def take(self, value):
        return {"ui": {"text": [type(value).__name__]}}


NODE_CLASS_MAPPINGS = {"ConduitTestTinyCheckpoint": ConduitTestTinyCheckpoint,
                       "ConduitTestTinyDiT": ConduitTestTinyDiT,
                       "ConduitTestTinyControlNet": ConduitTestTinyControlNet,
                       "ConduitTestTinyDiTControlNet": ConduitTestTinyDiTControlNet,
                       "ConduitTestShortKeyPAG": ConduitTestShortKeyPAG,
                       "ConduitTestSink": ConduitTestSink}
