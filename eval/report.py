"""Write eval results: JSON + Markdown tables, image grids and simple line plots (PIL only)."""
from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

OUT = Path(os.environ.get("CONDUIT_EVAL_OUT", Path(__file__).resolve().parent / "out"))


def out_dir() -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT


def fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    """Rows as Markdown, one table per run of rows with the same columns (a suite may list per-word rows, then
    per-image rows: one header for both would leave the second kind blank)."""
    if not rows:
        return "(no rows)\n"
    tables = []
    for cols, group in itertools.groupby(rows, key=tuple):  # a dict's tuple is its column names, in order
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in group]
        tables.append("\n".join(lines) + "\n")
    return "\n".join(tables)


def write(name: str, summary: dict, rows: list[dict], notes: str = "") -> Path:
    d = out_dir()
    (d / f"{name}.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, default=float))
    text = f"# {name}\n\n{notes}\n\n## summary\n\n" + markdown_table([summary]) + "\n## rows\n\n" + markdown_table(rows)
    path = d / f"{name}.md"
    path.write_text(text)
    return path


def grid(images: list[np.ndarray], cols: int, path: str | Path, scale: int = 2, labels: list[str] | None = None):
    """Images [H, W, 3] in [0, 1] tiled row-major, optionally a label strip above each row."""
    h, w = images[0].shape[:2]
    rows = math.ceil(len(images) / cols)
    strip = 12 if labels else 0
    canvas = Image.new("RGB", (cols * w * scale, rows * (h * scale + strip)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        tile = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
        tile = tile.resize((w * scale, h * scale), Image.NEAREST)
        canvas.paste(tile, (c * w * scale, r * (h * scale + strip) + strip))
    if labels:
        for r, text in enumerate(labels[:rows]):
            draw.text((2, r * (h * scale + strip)), text, fill=(0, 0, 0))
    canvas.save(path)


COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def line_plot(series: dict[str, list[tuple[float, float]]], path: str | Path, title: str = "",
              xlabel: str = "", ylabel: str = "", size: tuple[int, int] = (520, 360)) -> None:
    """A minimal line plot with markers, axes, ticks and a legend."""
    w, h = size
    left, right, top, bottom = 60, 150, 30, 45
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s if all(math.isfinite(v) for v in p)]
    if not pts:
        img.save(path)
        return
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for i in range(5):
        yv = y0 + i * (y1 - y0) / 4
        _, yp = px(x0, yv)
        d.line([left - 4, yp, left, yp], fill=(0, 0, 0))
        d.text((4, yp - 6), f"{yv:.3g}", fill=(0, 0, 0))
        xv = x0 + i * (x1 - x0) / 4
        xp, _ = px(xv, y0)
        d.line([xp, h - bottom, xp, h - bottom + 4], fill=(0, 0, 0))
        d.text((xp - 10, h - bottom + 6), f"{xv:.3g}", fill=(0, 0, 0))
    d.text((left, 8), title, fill=(0, 0, 0))
    d.text(((w - right + left) // 2 - 20, h - 16), xlabel, fill=(0, 0, 0))
    d.text((4, top - 16), ylabel, fill=(0, 0, 0))
    for i, (name, s) in enumerate(series.items()):
        col = COLORS[i % len(COLORS)]
        s = [p for p in s if all(math.isfinite(v) for v in p)]
        coords = [px(x, y) for x, y in s]
        if len(coords) > 1:
            d.line(coords, fill=col, width=2)
        for cx, cy in coords:
            d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=col)
        d.line([w - right + 10, top + 10 + 16 * i, w - right + 30, top + 10 + 16 * i], fill=col, width=2)
        d.text((w - right + 34, top + 4 + 16 * i), name[:18], fill=(0, 0, 0))
    img.save(path)
