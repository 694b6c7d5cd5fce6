"""Widget specs that more than one node module declares (the discovery in nodes/__init__.py skips _ modules)."""
from __future__ import annotations


def canvas_size(width_tip: str, height_tip: str) -> dict:
    """canvas_width / canvas_height: COW Seed Canvas and MLLM Plan must be able to describe the same canvas."""
    size = {"default": 512, "min": 64, "max": 8192, "step": 8}
    return {"canvas_width": ("INT", {**size, "tooltip": width_tip}),
            "canvas_height": ("INT", {**size, "tooltip": height_tip})}
