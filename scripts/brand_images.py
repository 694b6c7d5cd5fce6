"""Draw the registry icon and banner (assets/icon.png, assets/banner.png) from the pack's own material.

The banner is the shipped SDXL style table drawn by the heatmap node's renderer (layers x timesteps, the
lambda_S = 0.43 cut outlined), so the picture on the registry page is what the pack computes. Run from the
repository root: python scripts/brand_images.py
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import conduit  # noqa: E402,F401  (registers conduit_pack)
from conduit_pack.patches.tables.heatmap import render  # noqa: E402
from conduit_pack.patches.tables.tables_math import load_table  # noqa: E402

INK, PAPER, ACCENT = (245, 245, 240), (22, 24, 33), (255, 170, 40)
BANNER = (1260, 540)  # 21:9, as the registry asks


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1 has one bitmap size
        return ImageFont.load_default()


def icon(side: int = 256) -> Image.Image:
    """Three channels; one condition (the accent) flows only through the middle one."""
    img = Image.new("RGB", (side, side), PAPER)
    d = ImageDraw.Draw(img)
    pad, gap = side // 8, side // 5
    for i in range(3):
        y = pad + gap // 2 + i * gap + gap // 2
        colour = ACCENT if i == 1 else (90, 96, 120)
        d.rounded_rectangle((pad, y - side // 20, side - pad, y + side // 20), radius=side // 20, fill=colour)
    d.ellipse((side // 2 - side // 9, side // 2 - side // 9, side // 2 + side // 9, side // 2 + side // 9),
              outline=INK, width=max(2, side // 40))
    return img


def banner() -> Image.Image:
    img = Image.new("RGB", BANNER, PAPER)
    heat = render(load_table(REPO / "sensitivity_tables" / "sdxl_style_qk.json"), 0.43, ["q"])
    heat.thumbnail((BANNER[0] // 2, BANNER[1] - 80))
    img.paste(heat, (BANNER[0] - heat.width - 40, (BANNER[1] - heat.height) // 2))
    d = ImageDraw.Draw(img)
    d.text((60, 150), "Conduit", fill=INK, font=font(96))
    d.text((64, 280), "each condition only where it belongs:", fill=(190, 192, 200), font=font(28))
    d.text((64, 320), "layers, timesteps and regions", fill=ACCENT, font=font(28))
    d.text((64, 420), "Conditional Balance - SEG - Abs-Grad-SAM - COW / SOW", fill=(150, 154, 170), font=font(22))
    return img


if __name__ == "__main__":
    out = REPO / "assets"
    out.mkdir(exist_ok=True)
    icon().save(out / "icon.png", optimize=True)
    banner().save(out / "banner.png", optimize=True)
    print(f"wrote {out / 'icon.png'} and {out / 'banner.png'}")
