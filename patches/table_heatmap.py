"""Draw a sensitivity table as a layers × timesteps heatmap (PIL, which ComfyUI ships; no comfy imports).

One panel per feature; rows are layers in UNet order with block separators and labels, columns are
timesteps from the first (noisiest) step to the last. Bright = low score = more sensitive. A white
contour surrounds the cells inside the λS cut (the int(λS·L) most sensitive layers of each column), and
a strip under each panel shows the column's mean score (what the structure mode ranks timesteps by).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from .tables_math import SensitivityTable, key_short

# viridis control points, reversed so that low (sensitive) scores are bright
_STOPS = [(0.993, 0.906, 0.144), (0.369, 0.788, 0.384), (0.128, 0.567, 0.551), (0.231, 0.322, 0.545),
          (0.267, 0.005, 0.329)]
BACKGROUND = (24, 24, 28)
TEXT = (230, 230, 230)
CUT = (255, 255, 255)


def colour(x: torch.Tensor) -> torch.Tensor:
    """x in [0, 1] (any shape) -> uint8 RGB [..., 3] on the reversed viridis ramp."""
    stops = torch.tensor(_STOPS, dtype=torch.float64)
    pos = x.clamp(0, 1).double() * (len(_STOPS) - 1)
    lo = pos.floor().long().clamp(max=len(_STOPS) - 2)
    w = (pos - lo).unsqueeze(-1)
    rgb = stops[lo] * (1 - w) + stops[lo + 1] * w
    return (rgb * 255).round().to(torch.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _text_w(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0]


def _text_h(draw: ImageDraw.ImageDraw, font) -> int:
    box = draw.textbbox((0, 0), "Ag", font=font)
    return box[3] - box[1]


def _cut_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """[T, L] bool: True where the layer is among the count lowest scores of its row."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if count > 0:
        idx = torch.sort(scores, dim=1, stable=True).indices[:, :count]
        mask.scatter_(1, idx, True)
    return mask


def render(table: SensitivityTable, lambda_s: float = 0.43, features: Sequence[str] | None = None,
           cell: tuple[int, int] | None = None) -> Image.Image:
    """The heatmap as an RGB PIL image."""
    feats = [f for f in (features or table.features) if f in table.scores] or table.features
    n_layers, n_steps = table.num_layers, len(table.timesteps)
    order = sorted(range(n_steps), key=lambda i: -table.timesteps[i])  # noisiest first
    ch = cell[1] if cell else max(8, min(22, 720 // n_layers))
    cw = cell[0] if cell else max(6, min(28, 640 // n_steps))
    font = _font(max(9, min(14, ch)))
    small = _font(max(9, min(12, ch)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [key_short(k) for k in table.layer_keys]
    label_w = max(_text_w(probe, s, small) for s in labels) + 10
    count = table.count_for(lambda_s)
    title = (f"{table.family} {table.dimension} sensitivity, {n_layers} layers x {n_steps} timesteps  "
             f"(bright = lower score = more sensitive)")
    subtitle = f"white line: lambda_S = {lambda_s:g} cut, the {count} most sensitive layers of each timestep"
    line_h = _text_h(probe, font) + 6
    panel_w, grid_h = n_steps * cw, n_layers * ch
    gap, strip = 24, max(10, ch)
    top = 6 + 2 * line_h + _text_h(probe, small) + 8
    bottom = 14 + strip + 36 + 30
    width = max(label_w + len(feats) * panel_w + (len(feats) - 1) * gap + 90,
                16 + max(_text_w(probe, title, font), _text_w(probe, subtitle, small)))
    height = top + grid_h + bottom
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)

    all_scores = torch.cat([table.scores[f].flatten() for f in feats])
    lo, hi = float(all_scores.min()), float(all_scores.max())
    span = hi - lo if hi > lo else 1.0
    draw.text((8, 6), title, fill=TEXT, font=font)
    draw.text((8, 6 + line_h), subtitle, fill=TEXT, font=small)

    # layer labels, one per row where they fit, always at block starts
    step = max(1, -(-12 // ch))
    for r, key in enumerate(table.layer_keys):
        new_block = r == 0 or key[:2] != table.layer_keys[r - 1][:2]
        if new_block or r % step == 0:
            draw.text((4, top + r * ch + max(0, (ch - 11) // 2)), labels[r], fill=TEXT, font=small)

    for p, f in enumerate(feats):
        x0 = label_w + p * (panel_w + gap)
        s = table.scores[f][order]  # [T, L] noisiest first
        rgb = colour((s - lo) / span)  # [T, L, 3]
        grid = rgb.permute(1, 0, 2).contiguous()  # [L, T, 3]
        tile = grid.repeat_interleave(ch, 0).repeat_interleave(cw, 1).numpy()
        img.paste(Image.fromarray(tile, "RGB"), (x0, top))
        draw.text((x0, top - _text_h(probe, small) - 6), f"feature {f}", fill=TEXT, font=small)
        # block separators
        for r in range(1, n_layers):
            if table.layer_keys[r][:2] != table.layer_keys[r - 1][:2]:
                draw.line([(x0, top + r * ch), (x0 + panel_w - 1, top + r * ch)], fill=BACKGROUND, width=1)
        # λS cut: contour between selected and unselected cells
        mask = _cut_mask(s, count).t()  # [L, T]
        for r in range(n_layers):
            for c in range(n_steps):
                if not bool(mask[r, c]):
                    continue
                x, y = x0 + c * cw, top + r * ch
                if r == 0 or not bool(mask[r - 1, c]):
                    draw.line([(x, y), (x + cw, y)], fill=CUT, width=2)
                if r == n_layers - 1 or not bool(mask[r + 1, c]):
                    draw.line([(x, y + ch), (x + cw, y + ch)], fill=CUT, width=2)
                if c == 0 or not bool(mask[r, c - 1]):
                    draw.line([(x, y), (x, y + ch)], fill=CUT, width=2)
                if c == n_steps - 1 or not bool(mask[r, c + 1]):
                    draw.line([(x + cw, y), (x + cw, y + ch)], fill=CUT, width=2)
        # column means (timestep sensitivity) and timestep ticks
        ys = top + grid_h + 6
        means = colour((s.mean(dim=1) - lo) / span)
        strip_img = means.unsqueeze(0).repeat_interleave(strip, 0).repeat_interleave(cw, 1).numpy()
        img.paste(Image.fromarray(strip_img, "RGB"), (x0, ys))
        tick_every = max(1, -(-36 // cw))
        for c in range(0, n_steps, tick_every):
            draw.text((x0 + c * cw, ys + strip + 4), str(table.timesteps[order[c]]), fill=TEXT, font=small)
    draw.text((label_w, top + grid_h + 6 + strip + 20), "timestep (noisiest left); strip: mean over layers",
              fill=TEXT, font=small)

    # colour bar
    bx, by, bh = width - 70, top, grid_h
    ramp = colour(torch.linspace(0, 1, bh)).unsqueeze(1).repeat_interleave(14, 1).numpy()
    img.paste(Image.fromarray(ramp, "RGB"), (bx, by))
    draw.text((bx + 18, by), f"{lo:.3f}", fill=TEXT, font=small)
    draw.text((bx + 18, by + bh - 12), f"{hi:.3f}", fill=TEXT, font=small)
    return img


def to_comfy_image(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> ComfyUI IMAGE [1, H, W, 3] float in [0, 1]."""
    import numpy as np

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).unsqueeze(0)
