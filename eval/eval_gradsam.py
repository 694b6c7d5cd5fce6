"""Abs-Grad-SAM on the toy model: background kept from a reference, subject from the prompt.

A procedural reference (one shape on a background) is VAE-encoded. The prompt asks for another shape and
colour on the same background. Conduit Grad-SAM KSampler starts from the reference latent at denoise d and,
at its manipulation steps, keeps only what the subject words attend to, replacing the rest by the noised
reference. Plain img2img (KSampler at the same denoise from the same latent) is the baseline.
  * background fidelity: PSNR / SSIM against the reference outside the generated subject (dilated by 2 px)
    and outside the reference's own subject;
  * subject presence: ToyNet reads the prompt's shape and colour.
At 64x64 the last up-block cross-attention has an 8x8 grid: one latent pixel is 8 image pixels, so the
reference's dilation of 3 latent pixels covers most of the image; dilation 1 is measured too.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from conduit_pack.toyworld import world

from . import classifier, measures, report
from .gen import Toy, load_toy
import conduit_pack.nodes  # noqa: E402
import conduit_pack.nodes.gradsam  # noqa: E402

log = logging.getLogger(__name__)

DENOISES = (0.6, 0.8, 1.0)
# (reference: colour, texture, shape, background) -> prompt (colour, texture, shape) on the same background
CASES = (
    (("red", "solid", "circle", "gray"), ("blue", "striped", "square")),
    (("yellow", "dotted", "square", "black"), ("green", "solid", "star")),
    (("purple", "checkered", "ring", "white"), ("orange", "solid", "triangle")),
    (("blue", "solid", "triangle", "beige"), ("red", "checkered", "circle")),
    (("green", "striped", "star", "gray"), ("purple", "solid", "ring")),
    (("orange", "speckled", "square", "white"), ("blue", "dotted", "circle")),
)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(px):
        m = out.copy()
        m[1:] |= out[:-1]
        m[:-1] |= out[1:]
        m[:, 1:] |= out[:, :-1]
        m[:, :-1] |= out[:, 1:]
        out = m
    return out


def gradsam_sample(toy: Toy, text: str, subject: str, ref_latent: torch.Tensor, denoise: float, seed: int,
                   steps: int, cfg: float, dilation: int) -> np.ndarray:
    node = conduit_pack.nodes.NODE_CLASS_MAPPINGS["ConduitGradSAMKSampler"]()
    out, _ = node.sample(toy.model, toy.cond(text), toy.cond(""), {"samples": ref_latent.clone()},
                         {"samples": ref_latent.clone()}, toy.clip, text, subject, seed, steps, cfg, "euler",
                         "normal", denoise, conduit_pack.nodes.gradsam.DEFAULT_PERCENTS, 0,
                         layers="last", score="abs", kappa=0.5, threshold_over="each subject", blur_sigma=1.0,
                         dilation=dilation, custom_layers="")
    return toy.decode(out["samples"])[0]


def evaluate(toy: Toy, net, cases=CASES, denoises=DENOISES, seeds: int = 2, steps: int = 20, cfg: float = 4.0):
    rows, images = [], []
    for i, (ref_spec, (c, t, s)) in enumerate(cases):
        rc, rt, rs, bg = ref_spec
        ref_sample = world.sample(i, 41, "all", color=rc, texture=rt, shape=rs, background=bg)
        ref = ref_sample.image.astype(np.float32) / 255.0
        ref_latent = toy.encode(ref[None])
        text = world.caption(c, t, s, bg)
        subject = f"{c} {t} {s}"
        for d in denoises:
            for k in range(seeds):
                seed = 500 + 10 * i + k
                outs = {"img2img": toy.generate(text, seed=seed, latent=ref_latent.clone(), denoise=d, steps=steps,
                                                cfg=cfg)[0]}
                for dil in (1, 3):
                    outs[f"gradsam dil{dil}"] = gradsam_sample(toy, text, subject, ref_latent, d, seed, steps, cfg, dil)
                for method, img in outs.items():
                    labels, _ = classifier.predict(net, img[None])
                    region = ~dilate(measures.foreground(img), 2) & ~dilate(ref_sample.mask > 0.05, 2)
                    rows.append({"case": i, "denoise": d, "seed": k, "method": method,
                                 "bg_psnr": measures.psnr(img, ref, region) if region.any() else float("nan"),
                                 "bg_ssim": measures.ssim(img, ref, region) if region.any() else float("nan"),
                                 "subject_shape": labels["shape"][0] == s, "subject_color": labels["color"][0] == c,
                                 "kept_ref_shape": labels["shape"][0] == rs})
                    if k == 0:
                        images.append(img)
    summary_rows = []
    for d in denoises:
        for method in ("img2img", "gradsam dil1", "gradsam dil3"):
            rs_ = [r for r in rows if r["denoise"] == d and r["method"] == method]
            summary_rows.append({"denoise": d, "method": method,
                                 "bg_psnr": float(np.nanmean([r["bg_psnr"] for r in rs_])),
                                 "bg_ssim": float(np.nanmean([r["bg_ssim"] for r in rs_])),
                                 "subject_shape": float(np.mean([r["subject_shape"] for r in rs_])),
                                 "subject_color": float(np.mean([r["subject_color"] for r in rs_])),
                                 "kept_ref_shape": float(np.mean([r["kept_ref_shape"] for r in rs_]))})
    return summary_rows, rows, images


def run(quick: bool = False) -> dict:
    net = classifier.load()
    toy = load_toy()
    summary_rows, rows, images = evaluate(toy, net, cases=CASES[:2] if quick else CASES,
                                          denoises=(0.8,) if quick else DENOISES, seeds=1 if quick else 2,
                                          steps=10 if quick else 20)
    out = report.out_dir()
    report.write("gradsam", {"rows": len(rows)}, summary_rows + rows, __doc__)
    report.grid(images, 3 * (1 if quick else len(DENOISES)), out / "gradsam_grid.png")
    for metric in ("bg_psnr", "subject_shape"):
        series = {m: [(r["denoise"], r[metric]) for r in summary_rows if r["method"] == m]
                  for m in ("img2img", "gradsam dil1", "gradsam dil3")}
        report.line_plot(series, out / f"gradsam_{metric}.png", title=f"Abs-Grad-SAM vs img2img: {metric}",
                         xlabel="denoise", ylabel=metric)
    return {"by_denoise": summary_rows}
