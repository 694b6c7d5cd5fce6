"""Smoothed Energy Guidance on the toy model: Fréchet distance to the data over blur sigma and scale.

Quality proxy: the toy Fréchet distance (ToyNet features) between generated images and procedural images
(lower is better), plus ToyNet's caption accuracy. Two settings:
  * unconditional: the empty prompt at cfg 1, compared with the whole training distribution (the paper's
    main setting);
  * conditional: held-out and training captions at cfg 3, compared with procedural images of the same captions.
Against vanilla sampling and, on hosts that have it, ComfyUI's own PerturbedAttentionGuidance node.
On the v2 toy UNet the middle block (SEG's default layers) has a 4x4 token grid at 64x64, so a finite blur
(sigma 1, 2) differs from the infinite one (the mean); the "output" preset (4x4 and 8x8 grids) is swept as
well, and the scale up to 8 to show saturation.
Intervals: 95 % bootstrap of FD(config) - FD(vanilla), resampling the generated images (paired: the same
prompt and seed in both configs; the reference set fixed), 200 resamples.
"""
from __future__ import annotations

import logging
import math

import numpy as np

import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from conduit_pack.toyworld import world

from . import classifier, measures, report, stats
from .gen import Toy, load_toy
from .quality import caption_text, captions_for, reference_images

log = logging.getLogger(__name__)

SIGMAS = (1.0, 2.0, math.inf)
OUTPUT_SIGMAS = (math.inf,)
SCALES = (1.0, 3.0, 8.0)
FD_RESAMPLES = 200


def seg_model(toy: Toy, scale: float, sigma: float, layers: str = "middle"):
    import conduit_pack.patches.seg.guidance as seg
    return seg.apply_seg(toy.model, seg.SegSettings(scale=scale, sigma=sigma, layers=layers))


def pag_model(toy: Toy, scale: float):
    """ComfyUI's own PAG node, or None on a host without it (the pinned host predates it)."""
    try:
        from comfy_extras.nodes_pag import PerturbedAttentionGuidance
    except ImportError:
        return None
    node = PerturbedAttentionGuidance
    if hasattr(node, "execute"):
        out = node.execute(toy.model, scale)
        return out[0] if isinstance(out, tuple) else out.result[0]
    return node().patch(toy.model, scale)[0]


def run_config(toy: Toy, net, model, prompts: list[str], seeds: int, cfg: float,
               steps: int) -> tuple[np.ndarray, np.ndarray, dict]:
    imgs, labels_all = [], {k: [] for k in classifier.HEADS}
    for i, text in enumerate(prompts):
        out = toy.generate(text, seed=1000 + i, batch=seeds, model=model, cfg=cfg, steps=steps)
        imgs.append(out)
    imgs = np.concatenate(imgs)
    labels, feats = classifier.predict(net, imgs)
    for k in labels_all:
        labels_all[k] = labels[k]
    return imgs, feats, labels_all


def evaluate(toy: Toy, net, configs: dict, setting: str, quick: bool, steps: int):
    if setting == "unconditional":
        prompts, cfg, seeds = [""] * (4 if quick else 16), 1.0, 8
        ref = np.stack([world.sample(i, 33, "train").image for i in range(len(prompts) * seeds)]) / 255.0
        truth = None
    else:
        caps = captions_for("heldout", 4, seed=3) + captions_for("train", 4, seed=3)
        prompts, cfg, seeds = [caption_text(*c) for c in caps], 3.0, 2 if quick else 6
        ref = reference_images(caps, seeds, seed=17)
        truth = [c for c in caps for _ in range(seeds)]
    _, ref_feats = classifier.predict(net, ref)
    rows, grids, feats_by = [], {}, {}
    for name, model in configs.items():
        if model is None:
            continue
        imgs, feats, labels = run_config(toy, net, model, prompts, seeds, cfg, steps)
        feats_by[name] = feats
        row = {"setting": setting, "config": name, "fd": measures.frechet_distance(feats, ref_feats), "n": len(imgs)}
        if truth is not None:
            row["shape_acc"] = float(np.mean([labels["shape"][i] == t[2] for i, t in enumerate(truth)]))
            row["all_acc"] = float(np.mean([labels["shape"][i] == t[2] and labels["color"][i] == t[0]
                                            and labels["texture"][i] == t[1] for i, t in enumerate(truth)]))
        rows.append(row)
        grids[name] = imgs[:8]
    for row in rows:
        if row["config"] != "vanilla" and row["config"] in feats_by:
            interval = fd_difference(feats_by[row["config"]], feats_by["vanilla"], ref_feats,
                                     resamples=50 if quick else FD_RESAMPLES)
            row["fd_minus_vanilla"] = stats.fmt(interval, 2)
            row["status"] = stats.status(interval, better="lower")
            row["_interval"] = interval
    return rows, grids


def fd_difference(feats: np.ndarray, base: np.ndarray, ref: np.ndarray, resamples: int = FD_RESAMPLES,
                  seed: int = 0) -> tuple[float, float, float]:
    """FD(feats) - FD(base) against ref, with a paired bootstrap interval over the generated images."""
    est = measures.frechet_distance(feats, ref) - measures.frechet_distance(base, ref)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(resamples):
        i = rng.integers(0, len(feats), len(feats))
        boots.append(measures.frechet_distance(feats[i], ref) - measures.frechet_distance(base[i], ref))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(est), float(lo), float(hi)


def configs_for(toy: Toy, quick: bool) -> dict:
    cfgs = {"vanilla": toy.model, "pag 3": pag_model(toy, 3.0)}
    sigmas = (2.0, math.inf) if quick else SIGMAS
    for layers in ("middle",) if quick else ("middle", "output"):
        for s in sigmas if layers == "middle" else OUTPUT_SIGMAS:
            cfgs[f"seg {layers} s=3 sigma={s}"] = seg_model(toy, 3.0, s, layers)
    for sc in (0.0,) if quick else SCALES:
        if sc != 3.0:  # scale 3 is the sigma sweep's "seg middle s=3 sigma=inf"
            cfgs[f"seg middle s={sc} sigma=inf"] = seg_model(toy, sc, math.inf, "middle")
    return cfgs


def run(quick: bool = False) -> dict:
    net = classifier.load()
    toy = load_toy()
    steps = 10 if quick else 20
    configs = configs_for(toy, quick)
    all_rows, out = [], report.out_dir()
    for setting in ("unconditional", "conditional"):
        rows, grids = evaluate(toy, net, configs, setting, quick, steps)
        all_rows += rows
        names = list(grids)
        report.grid([im for n in names for im in grids[n]], 8, out / f"seg_{setting}.png", labels=names)
        for layers in ("middle", "output"):
            pts = []
            for s in SIGMAS:
                r = next((r for r in rows if r["config"] == f"seg {layers} s=3 sigma={s}"), None)
                if r:
                    pts.append((math.log2(s) if math.isfinite(s) else math.log2(SIGMAS[-2]) + 1, r["fd"]))
            series = {f"SEG {layers} (scale 3)": pts,
                      "vanilla": [(p[0], rows[0]["fd"]) for p in pts]}
            pag = next((r for r in rows if r["config"] == "pag 3"), None)
            if pag:
                series["ComfyUI PAG 3"] = [(p[0], pag["fd"]) for p in pts]
            if pts:
                report.line_plot(series, out / f"seg_{setting}_{layers}_sigma.png",
                                 title=f"SEG {setting}: FD vs blur sigma (last point = infinite)",
                                 xlabel="log2 sigma", ylabel="toy FD")
        scale_pts = [(0.0, rows[0]["fd"])] + [(sc, r["fd"]) for sc in SCALES for r in rows
                     if r["config"] == (f"seg middle s={sc} sigma=inf" if sc != 3.0 else "seg middle s=3 sigma=inf")]
        report.line_plot({"SEG middle sigma=inf": scale_pts}, out / f"seg_{setting}_scale.png",
                         title=f"SEG {setting}: FD vs scale", xlabel="scale", ylabel="toy FD")
    summary = {}
    for setting in ("unconditional", "conditional"):
        rs = {r["config"]: r for r in all_rows if r["setting"] == setting}
        seg_best = min((r for n, r in rs.items() if n.startswith("seg") and " s=0.0 " not in n), key=lambda r: r["fd"])
        summary[f"{setting}_vanilla_fd"] = rs["vanilla"]["fd"]
        summary[f"{setting}_best_seg"] = seg_best["config"]
        summary[f"{setting}_best_seg_fd"] = seg_best["fd"]
        default = rs.get("seg middle s=3 sigma=inf", {})
        summary[f"{setting}_seg_default_fd"] = default.get("fd", float("nan"))
        summary[f"{setting}_seg_default_minus_vanilla"] = default.get("fd_minus_vanilla", "")
        summary[f"{setting}_seg_default_status"] = default.get("status", "not measured")
        summary[f"{setting}_best_seg_minus_vanilla"] = seg_best.get("fd_minus_vanilla", "")
        if "pag 3" in rs:
            summary[f"{setting}_pag_fd"] = rs["pag 3"]["fd"]
            summary[f"{setting}_pag_minus_vanilla"] = rs["pag 3"].get("fd_minus_vanilla", "")
    intervals = {f'{r["setting"]}: {r["config"]}': r.pop("_interval") for r in all_rows if "_interval" in r}
    report.write("seg", summary, all_rows, __doc__)
    return {"summary": summary, "claims": intervals}
