"""Convert the Conditional Balance gradings (cb_gradings.json) into Conduit sensitivity tables.

Usage: python scripts/convert_cb_tables.py [path/to/cb_gradings.json] [--out sensitivity_tables]

Columns are reordered from diffusers order (down, up, mid last) to ComfyUI forward order (input,
middle, output); each column keeps its diffusers name in source_names and its original index in
provenance["source_index"]. Scores are copied as float64 without rounding.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import conduit_pack.patches.tables.tables_math  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tables_math():
    """patches/tables_math.py through the pack's pure-module import (no ComfyUI needed)."""
    sys.path.insert(0, ROOT)
    import conduit  # noqa: F401  (registers conduit_pack for the imports below)

    return conduit_pack.patches.tables.tables_math


CB_REPO = "Nadavc220/conditional-balance"
SOURCES = {
    # output name: (key in cb_gradings.json, family, provenance)
    "sdxl_style_qk": ("sdxl_style_layer_grading", "sdxl", {
        "source": f"{CB_REPO} grading_files/style_layer_grading (pickle prefix combined_texture_v2)",
        "paper": "Conditional Balance (CVPR 2025)",
        "experiment": "texture: 10 style prompts x 5 samples of 'A dark brown rabbit' with a canny ControlNet; "
                      "combined over experiments (trimmed mean)",
        "prompts": "A dark brown rabbit, <style prompt> (10 artist styles)",
        "image_count": 50, "steps": 50, "cfg": 5.0,
        "timestep_spacing": "diffusers EulerDiscrete 'leading' (981..1 step 20)",
    }),
    "sdxl_style_qkv": ("sdxl_style_balance_grading_v", "sdxl", {
        "source": f"{CB_REPO} grading_files/style_balance_grading_v (pickle prefix image_series_v_rabbit)",
        "paper": "Conditional Balance (CVPR 2025)",
        "experiment": "texture, single rabbit experiment with q, k and v statistics",
        "prompts": "A dark brown rabbit, <style prompt> (10 artist styles)",
        "image_count": 50, "steps": 50, "cfg": 5.0,
        "timestep_spacing": "diffusers EulerDiscrete 'leading' (981..1 step 20)",
    }),
    "sd35l_style_qkv": ("sd35L_gradingSd35L", "sd35l", {
        "source": "Nadavc220/conditional-balance-sd35 grading_files/gradingSd35L (pickle prefix series_outputs)",
        "paper": "Conditional Balance (CVPR 2025)",
        "experiment": "SD3.5-Large joint-attention blocks; data only (injection is UNet-only for now)",
        "steps": 28,
        "timestep_spacing": "flow-matching timesteps sigma*1000 of the 28-step SD3.5 schedule",
    }),
}


def convert(gradings: dict, name: str, tm) -> dict:
    key, family, provenance = SOURCES[name]
    src = gradings[key]
    names: list[str] = src["layer_names"]
    keys = [tm.diffusers_attn1_key(n) for n in names]
    order = tm.comfy_order(keys)
    timesteps = [int(t) for t in src["timesteps"]]
    features = [f for f in tm.FEATURES if f in src["stats"][str(timesteps[0])]]
    scores = {f: [[float(src["stats"][str(t)][f][c]) for c in order] for t in timesteps] for f in features}
    data = {
        "schema": tm.SCHEMA_ID, "version": tm.TABLE_VERSION, "family": family, "dimension": "style",
        "direction": "lower_is_more_sensitive",
        "layer_keys": [list(keys[c]) for c in order],
        "source_names": [names[c] for c in order],
        "timesteps": timesteps,
        "scores": scores,
        "provenance": {**provenance, "features": features, "source_index": order,
                       "converted_by": "scripts/convert_cb_tables.py"},
    }
    tm.parse_table(data, "convert_cb_tables")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("gradings", nargs="?", default=os.path.join("..", "shared", "data", "cb_gradings.json"),
                   help="cb_gradings.json (default: ../shared/data/cb_gradings.json from the repo root)")
    p.add_argument("--out", default=os.path.join(ROOT, "sensitivity_tables"), help="output folder")
    args = p.parse_args(argv)
    tm = _tables_math()
    path = args.gradings if os.path.isabs(args.gradings) else os.path.join(ROOT, args.gradings)
    with open(path, encoding="utf-8") as fh:
        gradings = json.load(fh)
    for name in SOURCES:
        table = tm.parse_table(convert(gradings, name, tm), "convert_cb_tables")
        out = os.path.join(args.out, f"{name}.json")
        tm.save_table(table, out)
        print(f"wrote {out}: {table.num_layers} layers x {len(table.timesteps)} timesteps, "
              f"features {','.join(table.features)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
