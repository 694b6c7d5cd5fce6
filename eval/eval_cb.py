"""Conditional Balance on the toy model: style match to the reference against shape fidelity to the prompt.

The toy model's own style sensitivity table is computed first with the pack's analysis code (the
Conduit Sensitivity Analysis node's engine): each group is one style (colour + texture) drawn as several
shapes. Then Conduit Balanced Style injects a procedural reference of some colour, texture and shape
into the top int(lambda_S x 7) self-attention layers. The prompt names only a shape and a plain background
("a star on a gray background"): the v2 toy model was trained with the style words dropped from most
captions, so the prompt leaves the style open and the reference is the only thing that can set it.
  * style match: ToyNet reads the reference's colour (and texture) in the output;
  * shape fidelity: ToyNet reads the prompt's shape (not the reference's);
  * combined score: the harmonic mean of the two rates (balance).
The paper's claim: an intermediate lambda_S beats both ends on the combined score. The same sweep with a
random layer ranking of the same size (one random permutation per table row, seeded) shows whether the
measured ranking matters. Intervals: 95 % bootstrap over the (pair, seed) units, paired across settings.

lambda_T: the toy ControlNet (toyworld/weights/toy_controlnet.safetensors, hint = a shape's silhouette) is
applied with the core Apply ControlNet (Advanced) node, strength 1, and gated by the Conduit ControlNet
Timestep Gate node (down residuals off at t < lambda_T x 1000, mid kept), on the lambda_S = 0.43 styled
model. The prompt asks for shape A, the hint shows another shape B at another place (neither the prompt's
nor the reference's shape). Fidelity to the ControlNet: IoU of the subject mask (saturated pixels) with the
hint silhouette, and ToyNet reading shape B. Style match as in the lambda_S sweep.
Baselines: no ControlNet (vanilla model, and the styled model) and the plain ControlNet without style.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from conduit_pack.toyworld import world

from . import classifier, gen, measures, report, stats
from .gen import Toy, load_toy
import conduit_pack.nodes  # noqa: E402

log = logging.getLogger(__name__)

LAMBDAS = (0.0, 0.2, 0.43, 0.7, 1.0)
ANALYSIS_STYLES = (("red", "striped"), ("blue", "dotted"), ("green", "checkered"), ("yellow", "speckled"),
                   ("purple", "solid"))
ANALYSIS_SHAPES = ("circle", "square", "star")
# (content: shape, background; the prompt names no style) -> style reference (colour, texture, shape):
# every colour and texture once or twice, the reference's shape never the prompt's.
PAIRS = (
    (("circle", "gray"), ("blue", "striped", "square")),
    (("triangle", "white"), ("purple", "checkered", "circle")),
    (("star", "black"), ("orange", "solid", "ring")),
    (("square", "beige"), ("red", "dotted", "triangle")),
    (("ring", "gray"), ("green", "speckled", "star")),
    (("circle", "white"), ("yellow", "striped", "square")),
    (("star", "gray"), ("red", "checkered", "circle")),
    (("triangle", "black"), ("green", "dotted", "square")),
    (("square", "white"), ("yellow", "solid", "ring")),
    (("ring", "beige"), ("blue", "speckled", "triangle")),
    (("circle", "black"), ("purple", "striped", "star")),
    (("star", "white"), ("orange", "dotted", "circle")),
)
RANDOM_TABLE_SEEDS = (1,)
FULL_SEEDS = 3  # seeds per pair in the full run (the CI size runs one)


def content_caption(content: tuple[str, str]) -> str:
    shape, bg = content
    return world.caption(None, None, shape, bg)


def random_ranking_table(table, seed: int):
    """The toy table with its layer ranking replaced by a random one (a permutation per row, seeded): the same
    layers, timesteps and layer counts per lambda, only the order is chance."""
    import dataclasses

    gen = torch.Generator().manual_seed(seed)
    scores = {}
    for feature, m in table.scores.items():
        rows = [torch.randperm(m.shape[1], generator=gen).to(m.dtype) for _ in range(m.shape[0])]
        scores[feature] = torch.stack(rows)
    prov = dict(table.provenance, source=f"random ranking (seed {seed}) of the toy table's layers")
    return dataclasses.replace(table, scores=scores, provenance=prov)


def toy_style_table(toy: Toy, steps: int, seeds: int):
    import conduit_pack.patches.tables.analysis as analysis
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


def styled_model(toy: Toy, lam: float, ref: np.ndarray, table, shift: float = 0.0):
    """Balanced Style at the node's defaults; `shift` (reference_attention_shift, default 0) only for the
    attention-mass diagnostic (diagnose_kv.py), never in the claim's experiment."""
    node = conduit_pack.nodes.NODE_CLASS_MAPPINGS["ConduitBalancedStyle"]()
    return node.patch(toy.model, style_strength=lam, adain_queries=True, adain_keys=True, share_attention=True,
                      reference_attention_scale=1.0, reference_attention_shift=shift, start_percent=0.0,
                      end_percent=1.0, noise_seed=0, inversion_steps=0,
                      reference_image=torch.from_numpy(ref)[None], vae=toy.vae, sensitivity_table=table)[0]


def evaluate(toy: Toy, net, table, lambdas=LAMBDAS, pairs=PAIRS, seeds: int = 3, steps: int = 20,
             ranking: str = "toy table"):
    rows, images = [], []
    for lam in lambdas:
        for p, (content, style) in enumerate(pairs):
            s, bg = content
            ref = reference_image(style, bg, p)
            model = styled_model(toy, lam, ref, table) if lam > 0 else toy.model
            imgs = np.concatenate([toy.generate(content_caption(content), seed=100 + p * 10 + k, model=model,
                                                steps=steps) for k in range(seeds)])
            labels, _ = classifier.predict(net, imgs)
            images.extend(imgs)
            for k, img in enumerate(imgs):
                rows.append({
                    "ranking": ranking, "lambda_s": lam, "pair": p, "seed": k,
                    "shape_ok": labels["shape"][k] == s,
                    "ref_shape": labels["shape"][k] == style[2],
                    "color_match": labels["color"][k] == style[0],
                    "texture_match": labels["texture"][k] == style[1],
                    "ref_palette_dist": measures.palette_distance(img, style[0]),
                    "ref_texture_dist": measures.texture_distance(img, ref),
                })
    summary_rows = []
    for lam in lambdas:
        rs = [r for r in rows if r["lambda_s"] == lam]
        shape = float(np.mean([r["shape_ok"] for r in rs]))
        style = float(np.mean([(r["color_match"] + r["texture_match"]) / 2 for r in rs]))
        summary_rows.append({
            "ranking": ranking, "lambda_s": lam, "layers": table.count_for(lam), "shape_fidelity": shape,
            "style_match": style,
            "color_match": float(np.mean([r["color_match"] for r in rs])),
            "texture_match": float(np.mean([r["texture_match"] for r in rs])),
            "took_ref_shape": float(np.mean([r["ref_shape"] for r in rs])),
            "ref_palette_dist": float(np.nanmean([r["ref_palette_dist"] for r in rs])),
            "ref_texture_dist": float(np.mean([r["ref_texture_dist"] for r in rs])),
            "balance": 2 * shape * style / (shape + style) if shape + style > 0 else 0.0,
        })
    return summary_rows, rows, images


LAMBDA_TS = (0.0, 0.5, 1.0)
LAMBDA_S_FOR_T = 0.43
# The hint's shape per pair: neither the prompt's shape nor the reference's.
HINT_SHAPES = ("star", "square", "triangle", "ring", "circle", "triangle")


def hint_spec(pair: int) -> world.Spec:
    """The hint's geometry: a training-distribution draw (centre and size anywhere), deterministic per pair;
    its shape is neither the prompt's nor the reference's."""
    (shape, bg), style = PAIRS[pair]
    hint_shape = next(h for h in (HINT_SHAPES[pair % len(HINT_SHAPES)], *world.SHAPES) if h not in (shape, style[2]))
    return world.spec_at(pair, 31, "all", shape=hint_shape, background=bg)


def controlled(toy: Toy, text: str, controlnet, hint: np.ndarray, lambda_t: float | None):
    """(positive, negative) with the ControlNet applied by the core node; gated by the Conduit gate node unless
    lambda_t is None; no ControlNet at all when controlnet is None."""
    import nodes

    pos, neg = toy.cond(text), toy.cond("")
    if controlnet is None:
        return pos, neg
    pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, controlnet, torch.from_numpy(hint)[None],
                                                                1.0, 0.0, 1.0)[:2]
    if lambda_t is None:
        return pos, neg
    node = conduit_pack.nodes.NODE_CLASS_MAPPINGS["ConduitControlNetTimestepGate"]()
    return node.gate(pos, neg, control_balance=lambda_t, gate_mid=False, invert=False)


def generate(toy: Toy, model, positive, negative, seed: int, steps: int) -> np.ndarray:
    from conduit import testing

    return toy.decode(testing.sample(model, positive, negative, latent_hw=gen.LATENT_HW, steps=steps, cfg=gen.CFG,
                                     sampler=gen.SAMPLER, scheduler=gen.SCHEDULER, seed=seed))


def lambda_t_configs(lambda_ts=LAMBDA_TS) -> list[tuple[str, float, bool, float | None]]:
    """(name, lambda_S, ControlNet on, lambda_T) per row of the lambda_T table."""
    rows = [("no ControlNet", 0.0, False, None), ("ControlNet", 0.0, True, None),
            (f"style {LAMBDA_S_FOR_T}, no ControlNet", LAMBDA_S_FOR_T, False, None)]
    return rows + [(f"style {LAMBDA_S_FOR_T} + ControlNet, lambda_T {lt}", LAMBDA_S_FOR_T, True, lt)
                   for lt in lambda_ts]


def evaluate_lambda_t(toy: Toy, net, table, controlnet, lambda_ts=LAMBDA_TS, pairs=range(len(PAIRS)),
                      seeds: int = 3, steps: int = 20):
    rows, images = [], {}
    hints = {p: hint_spec(p) for p in pairs}
    for name, lam_s, on, lam_t in lambda_t_configs(lambda_ts):
        for p in pairs:
            (s, bg), style = PAIRS[p]
            ref = reference_image(style, bg, p)
            model = styled_model(toy, lam_s, ref, table) if lam_s > 0 else toy.model
            hint = world.silhouette(hints[p])
            pos, neg = controlled(toy, content_caption((s, bg)), controlnet if on else None, hint, lam_t)
            imgs = np.concatenate([generate(toy, model, pos, neg, 100 + p * 10 + k, steps) for k in range(seeds)])
            labels, _ = classifier.predict(net, imgs)
            images[(name, p)] = imgs[0]
            for k, img in enumerate(imgs):
                rows.append({
                    "config": name, "lambda_s": lam_s, "controlnet": on, "lambda_t": lam_t, "pair": p, "seed": k,
                    "hint_iou": measures.iou(measures.foreground(img), hint[..., 0] > 0.5),
                    "hint_shape": labels["shape"][k] == hints[p].shape,
                    "prompt_shape": labels["shape"][k] == s,
                    "color_match": labels["color"][k] == style[0],
                    "texture_match": labels["texture"][k] == style[1],
                })
    summary_rows = []
    for name, lam_s, _on, lam_t in lambda_t_configs(lambda_ts):
        rs = [r for r in rows if r["config"] == name]
        summary_rows.append({
            "config": name, "lambda_s": lam_s, "lambda_t": "" if lam_t is None else lam_t,
            "hint_iou": float(np.mean([r["hint_iou"] for r in rs])),
            "hint_shape": float(np.mean([r["hint_shape"] for r in rs])),
            "prompt_shape": float(np.mean([r["prompt_shape"] for r in rs])),
            "style_match": float(np.mean([(r["color_match"] + r["texture_match"]) / 2 for r in rs])),
            "color_match": float(np.mean([r["color_match"] for r in rs])),
            "texture_match": float(np.mean([r["texture_match"] for r in rs])),
        })
    grid = [world.silhouette(hints[p]) for p in pairs]
    for name, *_ in lambda_t_configs(lambda_ts):
        grid += [images[(name, p)] for p in pairs]
    return summary_rows, rows, grid


def lambda_t_report(toy: Toy, net, table, quick: bool, steps: int) -> dict:
    """The lambda_T sweep: rows appended to cb.json / cb.md, plot cb_lambda_t.png, grid cb_lambda_t_grid.png."""
    import json

    from conduit_pack.toyworld import demo_model as toy_files

    try:
        controlnet = toy_files.load_toy_controlnet()
    except FileNotFoundError as exc:
        log.warning("lambda_T not measured: %s", exc)
        return {"lambda_t": f"not measured: {exc}"}
    matches = toy_files.read_recipe(toy_files.CONTROLNET_WEIGHTS).get("unet_fingerprint") == \
        toy_files.shipped_unet_fingerprint(toy_files.WEIGHTS)
    lambda_ts = (0.0, 0.4, 1.0) if quick else LAMBDA_TS
    pairs = range(3) if quick else range(len(PAIRS))
    summary_rows, rows, grid = evaluate_lambda_t(toy, net, table, controlnet, lambda_ts, pairs,
                                                 seeds=1 if quick else 2, steps=steps)
    out = report.out_dir()
    by = {r["config"]: r for r in summary_rows}
    swept = [r for r in summary_rows if r["lambda_t"] != ""]
    def per_unit(config: str, key: str) -> np.ndarray:
        rs = sorted((r for r in rows if r["config"] == config), key=lambda r: (r["pair"], r["seed"]))
        if key == "style":
            return np.array([(r["color_match"] + r["texture_match"]) / 2 for r in rs], np.float64)
        return np.array([float(r[key]) for r in rs])

    full = swept[0]["config"]
    found = {"iou_controlnet_minus_none": stats.paired_diff(per_unit("ControlNet", "hint_iou"),
                                                            per_unit("no ControlNet", "hint_iou"))}
    for r in swept[1:]:
        lt = r["lambda_t"]
        found[f"style_lambda_t_{lt}_minus_0"] = stats.paired_diff(per_unit(r["config"], "style"),
                                                                  per_unit(full, "style"))
        found[f"iou_lambda_t_{lt}_minus_no_cn"] = stats.paired_diff(
            per_unit(r["config"], "hint_iou"), per_unit(f"style {LAMBDA_S_FOR_T}, no ControlNet", "hint_iou"))
    summary = {
        "controlnet_matches_unet": matches, **{k: stats.fmt(v) for k, v in found.items()},
        "hint_iou_none": by["no ControlNet"]["hint_iou"], "hint_iou_controlnet": by["ControlNet"]["hint_iou"],
        "hint_iou_lambda_t_0": swept[0]["hint_iou"], "hint_iou_lambda_t_1": swept[-1]["hint_iou"],
        "style_match_lambda_t_0": swept[0]["style_match"], "style_match_lambda_t_1": swept[-1]["style_match"],
    }
    data = json.loads((out / "cb.json").read_text())
    data["lambda_t"] = {"summary": summary, "by_config": summary_rows, "rows": rows}
    (out / "cb.json").write_text(json.dumps(data, indent=1, default=float))
    with open(out / "cb.md", "a") as f:
        f.write("\n## lambda_T sweep (toy ControlNet, silhouette hint of another shape)\n\n"
                + report.markdown_table([summary]) + "\n" + report.markdown_table(summary_rows)
                + "\n### lambda_T rows\n\n" + report.markdown_table(rows))
    none_styled = by[f"style {LAMBDA_S_FOR_T}, no ControlNet"]
    report.line_plot({"hint IoU": [(r["lambda_t"], r["hint_iou"]) for r in swept],
                      "hint shape (ToyNet)": [(r["lambda_t"], r["hint_shape"]) for r in swept],
                      "style match": [(r["lambda_t"], r["style_match"]) for r in swept],
                      "prompt shape": [(r["lambda_t"], r["prompt_shape"]) for r in swept],
                      "hint IoU, no CN": [(0.0, none_styled["hint_iou"]), (1.0, none_styled["hint_iou"])]},
                     out / "cb_lambda_t.png", title=f"ControlNet gate lambda_T at lambda_S {LAMBDA_S_FOR_T}",
                     xlabel="lambda_T", ylabel="rate / IoU")
    report.grid(grid, len(pairs), out / "cb_lambda_t_grid.png",
                labels=["hint"] + [name for name, *_ in lambda_t_configs(lambda_ts)])
    return {"lambda_t": summary, "by_config": summary_rows, "lambda_t_claims": found}


def unit_index(rows: list[dict], ranking: str) -> tuple[list[tuple[int, int]], dict]:
    """The (pair, seed) units of one ranking in a fixed order, and its rows by (lambda_s, pair, seed)."""
    units = sorted({(r["pair"], r["seed"]) for r in rows if r["ranking"] == ranking})
    return units, {(r["lambda_s"], r["pair"], r["seed"]): r for r in rows if r["ranking"] == ranking}


def unit_array(rows: list[dict], lambdas, ranking: str, style: str = "colour and texture") -> np.ndarray:
    """[units, lambdas, 2] of (shape_ok, style) per (pair, seed) unit, in a fixed unit order. The claim's style
    match is the mean of colour and texture match; "colour" (a secondary read-out) counts the colour only, as
    textures are near ToyNet's ceiling through the toy VAE (quality suite, quality_ceiling)."""
    units, by = unit_index(rows, ranking)

    def match(r: dict) -> float:
        return float(r["color_match"]) if style == "colour" else (r["color_match"] + r["texture_match"]) / 2

    return np.array([[[float(by[(lam, *u)]["shape_ok"]), match(by[(lam, *u)])] for lam in lambdas]
                     for u in units])


def balance(x: np.ndarray) -> np.ndarray:
    """Harmonic mean of the mean shape fidelity and the mean style match, per lambda: x [units, lambdas, 2]."""
    m = x.mean(axis=0)
    return np.where(m.sum(-1) > 0, 2 * m[:, 0] * m[:, 1] / np.maximum(m.sum(-1), 1e-12), 0.0)


def claims(rows: list[dict], lambdas=LAMBDAS, random_lambdas=()) -> dict:
    """Bootstrap intervals for the lambda_S claims (units resampled, paired across lambdas and rankings)."""
    x = unit_array(rows, lambdas, "toy table")
    inner = [i for i, lam in enumerate(lambdas) if 0 < lam < 1]
    ends = [i for i, lam in enumerate(lambdas) if lam in (0.0, 1.0)]
    out = {
        "intermediate_minus_best_end": stats.ci(
            x, lambda a: float(balance(a)[inner].max() - balance(a)[ends].max())),
        "style_match_1_minus_0": stats.ci(x, lambda a: float(a[:, -1, 1].mean() - a[:, 0, 1].mean())),
        "shape_fidelity_1_minus_0": stats.ci(x, lambda a: float(a[:, -1, 0].mean() - a[:, 0, 0].mean())),
    }
    colour = unit_array(rows, lambdas, "toy table", style="colour")
    out["colour_only_intermediate_minus_best_end"] = stats.ci(
        colour, lambda a: float(balance(a)[inner].max() - balance(a)[ends].max()))
    mid = lambdas.index(0.43) if 0.43 in lambdas else inner[0]
    out["colour_match_0.43_minus_0"] = stats.ci(colour, lambda a: float(a[:, mid, 1].mean() - a[:, 0, 1].mean()))
    units, by = unit_index(rows, "toy table")
    dist = np.array([[by[(lam, *u)]["ref_palette_dist"] for lam in (lambdas[0], lambdas[mid])] for u in units])
    out["ref_palette_dist_0.43_minus_0"] = stats.ci(dist, lambda a: float(np.nanmean(a[:, 1] - a[:, 0])))
    for i, lam in enumerate(lambdas):
        out[f"balance_{lam}"] = stats.ci(x, lambda a, i=i: float(balance(a)[i]))
        out[f"style_{lam}"] = stats.ci(x[:, i, 1])
        out[f"shape_{lam}"] = stats.ci(x[:, i, 0])
    rand_rows = [r for r in rows if r["ranking"].startswith("random")]
    if rand_rows and random_lambdas:
        toy_x = unit_array(rows, random_lambdas, "toy table")
        rand_x = np.mean([unit_array(rows, random_lambdas, name)
                          for name in sorted({r["ranking"] for r in rand_rows})], axis=0)
        both = np.stack([toy_x, rand_x], axis=1)  # [units, 2 rankings, lambdas, 2]
        out["toy_minus_random_balance_mean"] = stats.ci(
            both, lambda a: float((balance(a[:, 0]) - balance(a[:, 1])).mean()))
        out["toy_minus_random_style_mean"] = stats.ci(
            both, lambda a: float(a[:, 0, :, 1].mean() - a[:, 1, :, 1].mean()))
        for j, lam in enumerate(random_lambdas):
            out[f"random_balance_{lam}"] = stats.ci(rand_x, lambda a, j=j: float(balance(a)[j]))
    return out


def run(quick: bool = False) -> dict:
    net = classifier.load()
    toy = load_toy()
    steps = 10 if quick else 20
    table = toy_style_table(toy, steps=steps, seeds=2 if quick else 3)
    import conduit_pack.patches.tables.tables_math as from_math
    out = report.out_dir()
    from_math.save_table(table, out / "cb_toy_style_table.json")
    pairs = PAIRS[:6] if quick else PAIRS
    seeds = 1 if quick else FULL_SEEDS
    summary_rows, rows, images = evaluate(toy, net, table, pairs=pairs, seeds=seeds, steps=steps)
    random_lambdas = tuple(lam for lam in LAMBDAS if 0 < lam < 1)
    random_seeds = RANDOM_TABLE_SEEDS[:1] if quick else RANDOM_TABLE_SEEDS
    for rs in random_seeds:
        rsum, rrows, _ = evaluate(toy, net, random_ranking_table(table, rs), random_lambdas, pairs, seeds, steps,
                                  ranking=f"random {rs}")
        summary_rows += rsum
        rows += rrows
    found = claims(rows, LAMBDAS, random_lambdas)
    toy_rows = [r for r in summary_rows if r["ranking"] == "toy table"]
    best = max(toy_rows, key=lambda r: r["balance"])
    summary = {"best_lambda_s": best["lambda_s"], "best_balance": best["balance"],
               "status": stats.status(found["intermediate_minus_best_end"]),
               "ranking_status": stats.status(found["toy_minus_random_balance_mean"]),
               **{k: stats.fmt(v) for k, v in found.items()}}
    report.write("cb", summary, summary_rows + rows, __doc__)
    rand_mean = {lam: (float(np.mean([r["style_match"] for r in summary_rows
                                      if r["ranking"].startswith("random") and r["lambda_s"] == lam])),
                       float(np.mean([r["shape_fidelity"] for r in summary_rows
                                      if r["ranking"].startswith("random") and r["lambda_s"] == lam])),
                       float(np.mean([r["balance"] for r in summary_rows
                                      if r["ranking"].startswith("random") and r["lambda_s"] == lam])))
                 for lam in random_lambdas}
    report.line_plot({"style match": [(r["lambda_s"], r["style_match"]) for r in toy_rows],
                      "shape fidelity": [(r["lambda_s"], r["shape_fidelity"]) for r in toy_rows],
                      "balance (F1)": [(r["lambda_s"], r["balance"]) for r in toy_rows],
                      "balance, random rank": [(lam, v[2]) for lam, v in rand_mean.items()]},
                     out / "cb_lambda_s.png", title="Conditional Balance on the toy model", xlabel="lambda_S",
                     ylabel="rate")
    ends = {r["lambda_s"]: r for r in toy_rows}
    report.line_plot({"toy table": [(r["style_match"], r["shape_fidelity"]) for r in toy_rows],
                      "random ranking": [(ends[0.0]["style_match"], ends[0.0]["shape_fidelity"])]
                      + [(v[0], v[1]) for v in rand_mean.values()]
                      + [(ends[1.0]["style_match"], ends[1.0]["shape_fidelity"])]},
                     out / "cb_tradeoff.png", title="style match (x) vs shape fidelity (y), lambda_S 0..1",
                     xlabel="style match", ylabel="shape fidelity")
    per = len(pairs) * seeds
    refs = [reference_image(style, content[1], p) for p, (content, style) in enumerate(pairs)]
    picked = [images[i * per + p * seeds] for i in range(len(LAMBDAS)) for p in range(len(pairs))]
    report.grid(refs + picked, len(pairs), out / "cb_grid.png",
                labels=["style reference"] + [f"lambda_S={lam}" for lam in LAMBDAS])
    return {"summary": summary, "by_lambda": summary_rows, "claims": found}


def saved_toy_table(toy: Toy, quick: bool, steps: int):
    """The toy table the cb suite wrote to eval/out/, computed and written here if it is missing."""
    import conduit_pack.patches.tables.tables_math as from_math

    path = report.out_dir() / "cb_toy_style_table.json"
    if path.exists():
        return from_math.load_table(str(path))
    table = toy_style_table(toy, steps=steps, seeds=2 if quick else 3)
    from_math.save_table(table, path)
    return table


def run_lambda_t(quick: bool = False) -> dict:
    """The lambda_T sweep (suite cb_t), on the toy table the cb suite wrote (computed here if missing)."""
    net = classifier.load()
    toy = load_toy()
    steps = 10 if quick else 20
    out = report.out_dir()
    table = saved_toy_table(toy, quick, steps)
    if not (out / "cb.json").exists():
        report.write("cb", {}, [], __doc__)
    return lambda_t_report(toy, net, table, quick, steps)
