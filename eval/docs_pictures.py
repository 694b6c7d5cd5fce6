"""Copy the eval's pictures that the docs show from eval/out/ into docs/img/: `python -m eval docs-pictures`.

Image grids become JPEG at most MAX_WIDTH px wide (the docs' pictures stay well under 2 MB in all); plots stay
PNG. Run it after a full `python -m eval`, so the docs show the figures their tables quote.
"""
from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
MAX_WIDTH = 1000
# docs/img name -> eval/out name
PICTURES = {
    "toy_quality_heldout.jpg": "quality_heldout.png",
    "toy_cb.jpg": "cb_grid.png",
    "toy_cb_lambda_s.png": "cb_lambda_s.png",
    "toy_cb_tradeoff.png": "cb_tradeoff.png",
    "toy_cb_lambda_t.jpg": "cb_lambda_t_grid.png",
    "toy_gradsam.jpg": "gradsam_grid.png",
    "toy_cow.jpg": "cow_grid.png",
    "toy_seg.jpg": "seg_unconditional.png",
    "toy_seg_scale.png": "seg_unconditional_scale.png",
    "toy_kv_swap.jpg": "kv_swap_grid.png",
}


def copy_pictures(out_dir: Path, docs_img: Path = DOCS_IMG) -> list[Path]:
    """Write every picture of PICTURES whose source exists; returns what was written."""
    written = []
    for name, source in PICTURES.items():
        src = out_dir / source
        if not src.exists():
            log.warning("no %s in %s: %s left as it is", source, out_dir, name)
            continue
        image = Image.open(src).convert("RGB")
        if name.endswith(".jpg"):
            if image.width > MAX_WIDTH:
                image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.LANCZOS)
            image.save(docs_img / name, quality=85, optimize=True)
        else:
            image.save(docs_img / name, optimize=True)
        written.append(docs_img / name)
    return written
