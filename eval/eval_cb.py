"""Conditional Balance on the toy model: style match to the reference against shape fidelity to the prompt.

The toy model's own style sensitivity table is computed first with the pack's analysis code (the
Conduit Sensitivity Analysis node's engine): each group is one style (colour + texture) drawn as several
shapes. Then Conduit Balanced Style injects a procedural reference of another colour, texture and shape
into the top int(lambda_S x 7) self-attention layers. Style match: ToyNet reads the reference's colour
and texture in the output (and the chroma/texture-spectrum distances). Shape fidelity: ToyNet reads the
prompt's shape (not the reference's). The paper's claim: an intermediate lambda_S beats both ends.
lambda_T (ControlNet gating) needs a ControlNet for the toy model, which does not exist yet: not measured.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from conduit.pack import pack_module
from toy import world

from . import classifier, measures, report
from .gen import Toy, load_toy

log = logging.getLogger(__name__)

LAMBDAS = (0.0, 0.2, 0.43, 0.7, 1.0)
ANALYSIS_STYLES = (("red", "striped"), ("blue", "dotted"), ("green", "checkered"), ("yellow", "speckled"),
                   ("purple", "solid"))
ANALYSIS_SHAPES = ("circle", "square", "star")
# (content caption, style reference): reference differs in colour, texture and shape; same background.
PAIRS = (
    (("red", "solid", "circle", "gray"), ("blue", "striped", "square")),
    (("yellow", "solid", "triangle", "white"), ("purple", "checkered", "circle")),
    (("green", "dotted", "star", "black"), ("orange", "solid", "ring")),
    (("blue", "checkered", "square", "beige"), ("red", "dotted", "triangle")),
    (("orange", "striped", "ring", "gray"), ("green", "speckled", "star")),
    (("purple", "speckled", "circle", "white"), ("yellow", "striped", "square")),
)


def toy_style_table(toy: Toy, steps: int, seeds: int):
    analysis = pack_module("patches.analysis")
    items = []
    for g, (color, texture) in enumerate(ANALYSIS_STYLES):
        for shape in ANALYSIS_SHAPES:
            text = world.caption(color, texture, shape, "gray")
            items.append(analysis.AnalysisItem(g, toy.cond(text), toy.cond(""), list(range(seeds)), label=text))
    settings = analysis.AnalysisSettings(steps=steps, cfg=4.0, latent_hw=(8, 8), dimension="style",
                                         provenance={"source": "eval/eval_cb.py toy style table"})
    return analysis.analyse(toy.model, items, settings, "toy eval")


def reference_image(style: tuple[str, str, str], background: str, index: int) -> np.ndarray:
    color, texture, shape = style
    s = world.sample(index, 21, "all", color=color, texture=texture, shape=shape, background=background)
    return s.image.astype(np.float32) / 255.0


def styled_model(toy: Toy, lam: float, ref: np.ndarray, table):
    node = pack_module("nodes.conditional_balance").NODE_CLASS_MAPPINGS["ConduitBalancedStyle"]()
    return node.patch(toy.model, style_strength=lam, adain_queries=True, adain_keys=True, share_attention=True,
                      reference_attention_scale=1.0, reference_attention_shift=0.0, start_percent=0.0,
                      end_percent=1.0, noise_seed=0, inversion_steps=0,
                      reference_image=torch.from_numpy(ref)[None], vae=toy.vae, sensitivity_table=table)[0]


def evaluate(toy: Toy, net, table, lambdas=LAMBDAS, pairs=PAIRS, seeds: int = 3, steps: int = 20):
    rows, images = [], []
    for lam in lambdas:
        for p, (content, style) in enumerate(pairs):
            c, t, s, bg = content
            ref = reference_image(style, bg, p)
            model = styled_model(toy, lam, ref, table)
            imgs = toy.generate(world.caption(c, t, s, bg), seed=100 + p, batch=1, model=model, steps=steps) \
                if seeds == 1 else np.concatenate([
                    toy.generate(world.caption(c, t, s, bg), seed=100 + p * 10 + k, model=model, steps=steps)
                    for k in range(seeds)])
            labels, _ = classifier.predict(net, imgs)
            images.extend(imgs)
            for k, img in enumerate(imgs):
                rows.append({
                    "lambda_s": lam, "pair": p, "seed": k,
                    "shape_ok": labels["shape"][k] == s,
                    "ref_shape": labels["shape"][k] == style[2],
                    "color_match": labels["color"][k] == style[0],
                    "texture_match": labels["texture"][k] == style[1],
                    "prompt_color": labels["color"][k] == c,
                    "ref_palette_dist": measures.palette_distance(img, style[0]),
                    "ref_texture_dist": measures.texture_distance(img, ref),
                })
    summary_rows = []
    for lam in lambdas:
        rs = [r for r in rows if r["lambda_s"] == lam]
        shape = float(np.mean([r["shape_ok"] for r in rs]))
        style = float(np.mean([(r["color_match"] + r["texture_match"]) / 2 for r in rs]))
        summary_rows.append({
            "lambda_s": lam, "shape_fidelity": shape, "style_match": style,
            "color_match": float(np.mean([r["color_match"] for r in rs])),
            "texture_match": float(np.mean([r["texture_match"] for r in rs])),
            "took_ref_shape": float(np.mean([r["ref_shape"] for r in rs])),
            "ref_palette_dist": float(np.nanmean([r["ref_palette_dist"] for r in rs])),
            "ref_texture_dist": float(np.mean([r["ref_texture_dist"] for r in rs])),
            "balance": 2 * shape * style / (shape + style) if shape + style > 0 else 0.0,
        })
    return summary_rows, rows, images


def run(quick: bool = False) -> dict:
    net = classifier.load()
    toy = load_toy()
    steps = 10 if quick else 20
    table = toy_style_table(toy, steps=steps, seeds=2 if quick else 3)
    from_math = pack_module("patches.tables_math")
    out = report.out_dir()
    from_math.save_table(table, out / "cb_toy_style_table.json")
    summary_rows, rows, images = evaluate(toy, net, table, pairs=PAIRS[:3] if quick else PAIRS,
                                          seeds=1 if quick else 3, steps=steps)
    best = max(summary_rows, key=lambda r: r["balance"])
    ends = [r for r in summary_rows if r["lambda_s"] in (0.0, 1.0)]
    claim = all(best["balance"] > e["balance"] for e in ends) and best["lambda_s"] not in (0.0, 1.0)
    summary = {"best_lambda_s": best["lambda_s"], "best_balance": best["balance"],
               "intermediate_beats_both_ends": claim,
               "style_match_rises": summary_rows[-1]["style_match"] > summary_rows[0]["style_match"],
               "lambda_t": "not measured: no toy ControlNet"}
    report.write("cb", summary, summary_rows + rows, __doc__)
    report.line_plot({"style match": [(r["lambda_s"], r["style_match"]) for r in summary_rows],
                      "shape fidelity": [(r["lambda_s"], r["shape_fidelity"]) for r in summary_rows],
                      "balance (F1)": [(r["lambda_s"], r["balance"]) for r in summary_rows]},
                     out / "cb_lambda_s.png", title="Conditional Balance on the toy model", xlabel="lambda_S",
                     ylabel="rate")
    report.line_plot({"trade-off": [(r["style_match"], r["shape_fidelity"]) for r in summary_rows]},
                     out / "cb_tradeoff.png", title="style match (x) vs shape fidelity (y), lambda_S 0..1",
                     xlabel="style match", ylabel="shape fidelity")
    per = len(images) // len(LAMBDAS)
    report.grid(images, per, out / "cb_grid.png", labels=[f"lambda_S={lam}" for lam in LAMBDAS])
    return {"summary": summary, "by_lambda": summary_rows}
