"""The demo toy model's input images, drawn by the toy world: a style reference, a COW condition, a ControlNet
hint and a Grad-SAM background.

They are drawn, not shipped as files, so a template that uses them (through Conduit Demo Toy Image) runs as it
opens, with nothing to put into ComfyUI's input folder; `make demo` and the tests write the same pictures as
PNG files for the workflows that load images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import world

COW_BOX = 40  # the COW condition is drawn at the box size the demo templates give COW (never rescaled)


@dataclass(frozen=True)
class DemoInput:
    file: str  # the PNG name the demo and the tests write into ComfyUI's input folder
    what: str  # what it shows and what it is for, in the node's tooltip
    spec: world.Spec
    size: int = world.SIZE
    silhouette: bool = False  # the ControlNet hint is the shape white on black


DEMO_INPUTS: dict[str, DemoInput] = {
    "style_reference": DemoInput(
        "toy_reference.png", "a blue striped square on gray: the style reference for Balanced Style",
        world.Spec("square", "blue", "striped", "gray", 30.0, 33.0, 20.0, seed=3)),
    "cow_condition": DemoInput(
        "toy_condition.png", f"a red speckled circle ({COW_BOX}x{COW_BOX}): COW's condition, whose speckle pattern "
        "no caption can name",
        world.Spec("circle", "red", "speckled", "gray", 32.0, 32.0, 26.0, seed=905), size=COW_BOX),
    "controlnet_hint": DemoInput(
        "toy_control.png", "a circle's silhouette, white on black, off-centre: the toy ControlNet's hint",
        world.Spec("circle", "red", "solid", "gray", 40.0, 24.0, 17.0), silhouette=True),
    "gradsam_scene": DemoInput(
        "toy_background.png", "a yellow circle on a banded scene: Grad-SAM's reference, whose background no "
        "caption can name",
        world.Spec("circle", "yellow", "solid", "bands", 22.0, 40.0, 16.0, seed=11)),
}
BY_FILE = {d.file: name for name, d in DEMO_INPUTS.items()}


def draw(name: str) -> np.ndarray:
    """The named input as an HxWx3 uint8 array (name: a DEMO_INPUTS key or its file name)."""
    item = DEMO_INPUTS[BY_FILE.get(name, name)]
    if item.silhouette:
        return (world.silhouette(item.spec, size=item.size) * 255).astype(np.uint8)
    return world.render(item.spec, size=item.size).image
