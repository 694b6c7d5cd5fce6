"""Draw a sensitivity table as a layers × timesteps heatmap (PIL, which ComfyUI ships; no comfy imports).

One panel per feature; rows are layers in UNet order with block separators and labels, columns are
timesteps from the first (noisiest) step to the last. Bright = low score = more sensitive. A white
contour surrounds the cells inside the lambda_S cut (the int(lambda_S·L) most sensitive layers of each column), and
a strip under each panel shows the column's mean score (what the structure mode ranks timesteps by).

The image is bounded (MAX_WIDTH x MAX_HEIGHT pixels): tables with more timesteps or layers than fit are drawn
with neighbouring ones averaged into one cell, and the work is linear in the table size.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from .tables_math import LAMBDA_MAX, SensitivityTable, check_lambda, key_short, short_text

HEATMAP_NODE = "Conduit Sensitivity Heatmap"
MAX_WIDTH = 4096   # pixels: the heatmap image is never wider ...
MAX_HEIGHT = 4096  # ... or taller than this, whatever the table's size
MIN_CELL = 2       # smallest cell side in pixels before timesteps/layers are averaged into one cell
LABEL_MAX_W = 120  # pixels for the layer labels

# viridis control points, reversed so that low (sensitive) scores are bright
_STOPS = [(0.993, 0.906, 0.144), (0.369, 0.788, 0.384), (0.128, 0.567, 0.551), (0.231, 0.322, 0.545),
          (0.267, 0.005, 0.329)]
BACKGROUND = (24, 24, 28)
TEXT = (230, 230, 230)
CUT = (255, 255, 255)


def colour(x: torch.Tensor) -> torch.Tensor:
    """x in [0, 1] (any shape) -> uint8 RGB [..., 3] on the reversed viridis ramp."""
    stops = torch.tensor(_STOPS, dtype=torch.float64)
    pos = torch.nan_to_num(x.double(), nan=0.0).clamp(0, 1) * (len(_STOPS) - 1)
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


def _bins(n: int, most: int) -> torch.Tensor:
    """Edges [k + 1] of k = min(n, most) contiguous, near-equal groups of range(n)."""
    k = max(1, min(n, most))
    return torch.div(torch.arange(k + 1) * n, k, rounding_mode="floor")


def _bin_mean(x: torch.Tensor, edges: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of x over each group of consecutive indices along dim (cumulative sums: linear in x)."""
    if len(edges) - 1 == x.shape[dim]:
        return x
    cs = torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), x.cumsum(dim)], dim)
    hi, lo = cs.index_select(dim, edges[1:]), cs.index_select(dim, edges[:-1])
    shape = [1] * x.ndim
    shape[dim] = len(edges) - 1
    return (hi - lo) / (edges[1:] - edges[:-1]).to(x.dtype).view(shape)


def _normalise(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """(x - lo) / (hi - lo) in [0, 1], computed on halves so that scores near ±1e308 do not overflow."""
    span = hi / 2 - lo / 2
    if not span > 0:
        return torch.zeros_like(x)
    return ((x / 2 - lo / 2) / span).clamp(0, 1)


def _label_number(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 1e4 else f"{x:.3g}"


def _cell(n: int, preferred: int, budget: int) -> tuple[int, int]:
    """(cells drawn, pixels per cell) for n rows/columns in budget pixels: the preferred size when it fits,
    else smaller cells down to MIN_CELL pixels, else n is averaged into budget // MIN_CELL cells."""
    if n * preferred <= budget:
        return n, preferred
    if n * MIN_CELL <= budget:
        return n, budget // n
    return max(1, budget // MIN_CELL), MIN_CELL


def _cut_edges(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """[R, C] bool each: selected cells whose upper, lower, left, right neighbour is unselected or the edge."""
    pad = torch.nn.functional.pad(mask, (1, 1, 1, 1))
    return (mask & ~pad[:-2, 1:-1], mask & ~pad[2:, 1:-1], mask & ~pad[1:-1, :-2], mask & ~pad[1:-1, 2:])


def _contour(mask: torch.Tensor, ch: int, cw: int) -> torch.Tensor:
    """[R·ch, C·cw] bool: the border pixels of selected cells that touch an unselected cell or the edge."""
    t = 2 if min(ch, cw) >= 6 else 1
    up, down, left, right = _cut_edges(mask)

    def px(edge: torch.Tensor) -> torch.Tensor:
        return edge.repeat_interleave(ch, 0).repeat_interleave(cw, 1)

    yy = torch.arange(mask.shape[0] * ch) % ch
    xx = torch.arange(mask.shape[1] * cw) % cw
    return ((px(up) & (yy < t)[:, None]) | (px(down) & (yy >= ch - t)[:, None])
            | (px(left) & (xx < t)[None, :]) | (px(right) & (xx >= cw - t)[None, :]))


def _draw_cut_lines(draw: ImageDraw.ImageDraw, cut: torch.Tensor, x0: int, top: int, ch: int, cw: int) -> None:
    """The lambda_S contour as 2 px lines on the borders between cut and uncut cells (only border cells are visited)."""
    up, down, left, right = _cut_edges(cut)
    for r, c in (up | down | left | right).nonzero().tolist():
        x, y = x0 + c * cw, top + r * ch
        if up[r, c]:
            draw.line([(x, y), (x + cw, y)], fill=CUT, width=2)
        if down[r, c]:
            draw.line([(x, y + ch), (x + cw, y + ch)], fill=CUT, width=2)
        if left[r, c]:
            draw.line([(x, y), (x, y + ch)], fill=CUT, width=2)
        if right[r, c]:
            draw.line([(x + cw, y), (x + cw, y + ch)], fill=CUT, width=2)


def render(table: SensitivityTable, lambda_s: float = 0.43, features: Sequence[str] | None = None,
           cell: tuple[int, int] | None = None, node: str = HEATMAP_NODE) -> Image.Image:
    """The heatmap as an RGB PIL image of at most MAX_WIDTH x MAX_HEIGHT pixels.

    Cells are 6-28 px wide and 8-22 px high when they fit; a long table gets smaller cells (down to MIN_CELL
    px) and then neighbouring timesteps (columns) or layers (rows) averaged into one cell, the lambda_S cut of such a
    cell being the majority of its members. Work is linear in the table size."""
    lambda_s = check_lambda(lambda_s, node, maximum=max(LAMBDA_MAX, float(table.num_layers)))
    feats = [f for f in (features or table.features) if f in table.scores] or table.features
    n_layers, n_steps = table.num_layers, len(table.timesteps)
    order = torch.tensor(sorted(range(n_steps), key=lambda i: -table.timesteps[i]), dtype=torch.long)  # noisiest first
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    count = table.count_for(lambda_s)
    title = (f"{short_text(table.family)} {table.dimension} sensitivity, {n_layers} layers x {n_steps} timesteps  "
             f"(bright = lower score = more sensitive)")
    subtitle = f"white line: lambda_S = {lambda_s:g} cut, the {count} most sensitive layers of each timestep"

    pref_h = cell[1] if cell else max(8, min(22, 720 // n_layers))
    pref_w = cell[0] if cell else max(6, min(28, 640 // n_steps))
    small0 = _font(max(9, min(12, pref_h)))  # the label font at the preferred cell height, as drawn when it fits
    label_w = min(LABEL_MAX_W, max(_text_w(probe, short_text(key_short(k), 12), small0)
                                   for k in table.layer_keys[:: max(1, n_layers // 512)]) + 10)
    gap = 24
    top_guess, bottom_guess = 100, 14 + 22 + 36 + 30
    rows, ch = _cell(n_layers, pref_h, MAX_HEIGHT - top_guess - bottom_guess)
    panel_budget = (MAX_WIDTH - label_w - 90 - (len(feats) - 1) * gap) // len(feats)
    cols, cw = _cell(n_steps, pref_w, panel_budget)
    row_edges, col_edges = _bins(n_layers, rows), _bins(n_steps, cols)
    row_first = row_edges[:-1].tolist()  # first layer of each drawn row
    col_first = order[col_edges[:-1]].tolist()  # first timestep of each drawn column

    font = _font(max(9, min(14, ch)))
    small = _font(max(9, min(12, ch)))
    labels = [short_text(key_short(table.layer_keys[r]), 12) for r in row_first]
    line_h = _text_h(probe, font) + 6
    panel_w, grid_h = cols * cw, rows * ch
    strip = max(10, min(ch, 22))
    top = 6 + 2 * line_h + _text_h(probe, small) + 8
    bottom = 14 + strip + 36 + 30
    width = max(label_w + len(feats) * panel_w + (len(feats) - 1) * gap + 90,
                16 + max(_text_w(probe, title, font), _text_w(probe, subtitle, small)))
    width = min(width, MAX_WIDTH)
    height = min(top + grid_h + bottom, MAX_HEIGHT)
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)

    all_scores = torch.cat([table.scores[f].flatten() for f in feats])
    lo, hi = float(all_scores.min()), float(all_scores.max())
    draw.text((8, 6), title, fill=TEXT, font=font)
    draw.text((8, 6 + line_h), subtitle, fill=TEXT, font=small)

    # layer labels, one per row where they fit, always at block starts
    step = max(1, -(-12 // ch))
    for r, first in enumerate(row_first):
        key = table.layer_keys[first]
        new_block = r == 0 or key[:2] != table.layer_keys[row_first[r - 1]][:2]
        if (new_block and (r == 0 or ch >= 12 or rows == n_layers)) or r % step == 0:
            draw.text((4, top + r * ch + max(0, (ch - 11) // 2)), labels[r], fill=TEXT, font=small)

    for p, f in enumerate(feats):
        x0 = label_w + p * (panel_w + gap)
        s = table.scores[f].index_select(0, order)  # [T, L] noisiest first
        norm = _normalise(s, lo, hi)
        grid = _bin_mean(_bin_mean(norm, col_edges, 0), row_edges, 1).t()  # [rows, cols] in [0, 1]
        rgb = colour(grid)
        tile = rgb.repeat_interleave(ch, 0).repeat_interleave(cw, 1)
        cut = _bin_mean(_bin_mean(_cut_mask(s, count).double(), col_edges, 0), row_edges, 1).t() >= 0.5
        exact = rows == n_layers and cols == n_steps
        if not exact:  # averaged cells: a pixel mask (linear); one cell per entry: lines, as drawn before
            tile[_contour(cut, ch, cw)] = torch.tensor(CUT, dtype=torch.uint8)
        # block separators
        for r in range(1, rows):
            if table.layer_keys[row_first[r]][:2] != table.layer_keys[row_first[r - 1]][:2]:
                tile[r * ch, :] = torch.tensor(BACKGROUND, dtype=torch.uint8)
        img.paste(Image.fromarray(tile.numpy(), "RGB"), (x0, top))
        if exact:
            _draw_cut_lines(draw, cut, x0, top, ch, cw)
        draw.text((x0, top - _text_h(probe, small) - 6), f"feature {f}", fill=TEXT, font=small)
        # column means (timestep sensitivity) and timestep ticks
        ys = top + grid_h + 6
        means = colour(_bin_mean(_normalise(s.mean(dim=1), lo, hi), col_edges, 0))
        strip_img = means.unsqueeze(0).repeat_interleave(strip, 0).repeat_interleave(cw, 1).numpy()
        img.paste(Image.fromarray(strip_img, "RGB"), (x0, ys))
        tick_every = max(1, -(-36 // cw))
        for c in range(0, cols, tick_every):
            draw.text((x0 + c * cw, ys + strip + 4), short_text(str(table.timesteps[col_first[c]]), 8), fill=TEXT,
                      font=small)
    draw.text((label_w, top + grid_h + 6 + strip + 20), "timestep (noisiest left); strip: mean over layers"
              + (f"; {n_steps} timesteps drawn as {cols} columns" if cols < n_steps else "")
              + (f"; {n_layers} layers drawn as {rows} rows" if rows < n_layers else ""),
              fill=TEXT, font=small)

    # colour bar
    bx, by, bh = width - 70, top, grid_h
    ramp = colour(torch.linspace(0, 1, bh)).unsqueeze(1).repeat_interleave(14, 1).numpy()
    img.paste(Image.fromarray(ramp, "RGB"), (bx, by))
    draw.text((bx + 18, by), _label_number(lo), fill=TEXT, font=small)
    draw.text((bx + 18, by + bh - 12), _label_number(hi), fill=TEXT, font=small)
    return img


def to_comfy_image(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> ComfyUI IMAGE [1, H, W, 3] float in [0, 1]."""
    import numpy as np

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).unsqueeze(0)
