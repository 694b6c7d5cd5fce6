"""The input images example workflows expect in ComfyUI's input folder, drawn procedurally.

Workflows name these files in their LoadImage nodes; the runner, the demo and the server tests write them
into the server's input directory (or upload them) before submitting.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .demo_toy import toy_image

SIZE = 256


def _stripes() -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    band = ((x + y) // 16) % 2
    rgb = np.where(band[..., None] == 1, [220, 80, 40], [250, 200, 60]).astype(np.uint8)
    return Image.fromarray(rgb)


def _object() -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    d = ImageDraw.Draw(img)
    d.ellipse((64, 64, 192, 192), fill=(40, 90, 200), outline=(250, 250, 250), width=6)
    return img


def _control() -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rectangle((48, 48, 208, 208), outline=(255, 255, 255), width=4)
    d.line((48, 208, 128, 48, 208, 208), fill=(255, 255, 255), width=4)
    return img


def _background() -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    sky = np.stack([90 + 0 * x, 150 + y // 4, 230 - y // 3], -1)
    ground = np.stack([60 + x // 8, 140 + 0 * x, 50 + 0 * y], -1)
    rgb = np.where((y > SIZE * 0.6)[..., None], ground, sky).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


IMAGES = {
    "conduit_reference.png": _stripes,
    "conduit_condition.png": _object,
    "conduit_control.png": _control,
    "conduit_background.png": _background,
}



def _toy_input(name: str):
    def draw() -> Image.Image:
        return toy_image(name)  # the demo toy model's inputs, drawn by its toy world
    return draw


IMAGES.update({name: _toy_input(name) for name in ("toy_reference.png", "toy_condition.png", "toy_control.png",
                                                   "toy_background.png")})


def png_bytes(name: str) -> bytes:
    buf = io.BytesIO()
    IMAGES[name]().save(buf, format="PNG")
    return buf.getvalue()


def write_inputs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in IMAGES:
        path = folder / name
        path.write_bytes(png_bytes(name))
        paths.append(path)
    return paths
