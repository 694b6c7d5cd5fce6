"""Cyclic One-Way Diffusion on the toy model: carry a condition's identity into a scene the prompt describes.

The condition is a procedural speckled shape: its speckle pattern is a random 8 px block pattern drawn
from the condition's seed, an identity no caption can name. It is rendered at the box's own size (40x40,
so the speckles are never rescaled) and placed in a box of a 64x64 gray seed canvas (Conduit
COW Seed Canvas, fit stretch = no rescale). The prompt asks for the same colour, shape and texture word on
a plain background of another colour ("a red speckled circle on a black background").
Methods (10 ddim_uniform steps, cfg 4):
  * COW: Invert 'crop alone' + Cycle Sampler + SamplerCustom, the shipped workflow's settings;
  * SOW: the same with Conduit SOW Attention (its defaults: suppression of condition -> rest attention) on
    the model;
  * paste + img2img: the seed canvas through plain img2img at denoise 0.7 (COW's cycle start);
  * paste only: the seed canvas itself (denoise 0).
Measures:
  * condition identity: Pearson correlation of the output's luminance with the condition's, over the
    condition's shape inside the box; the same correlation with a different speckle draw of the same shape
    (same colour and place) is the chance level;
  * prompt fidelity outside the box: share of the pixels outside the box within 0.15 (RGB distance, 0-1
    scale) of the prompt's background colour; ToyNet's background read of the whole image.
Intervals: 95 % bootstrap over (condition, seed), paired between methods.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from conduit_pack.toyworld import world

from . import classifier, measures, report, stats
from .gen import Toy, load_toy
import conduit_pack.nodes  # noqa: E402

log = logging.getLogger(__name__)

BOX = (8, 16, 40, 40)  # x, y, w, h in pixels, on the 8 px latent grid
METHODS = ("cow", "sow", "paste+img2img 0.7", "paste only")
# condition (colour, shape), always speckled -> prompt background
CASES = (
    (("red", "circle"), "black"),
    (("blue", "square"), "white"),
    (("yellow", "star"), "black"),
    (("green", "triangle"), "beige"),
    (("purple", "ring"), "white"),
    (("orange", "circle"), "beige"),
    (("blue", "triangle"), "black"),
    (("red", "square"), "white"),
)


def schedule(toy: Toy, steps: int, scheduler: str = "ddim_uniform") -> torch.Tensor:
    import comfy.samplers

    target = toy.model if hasattr(toy.model, "get_model_object") else toy.model.model
    return comfy.samplers.KSampler(target, steps=steps, device="cpu", sampler="euler", scheduler=scheduler,
                                   denoise=1.0, model_options=toy.model.model_options).sigmas.cpu()


def sow_model(toy: Toy, seed_geom):
    node = conduit_pack.nodes.NODE_CLASS_MAPPINGS["ConduitSOWAttention"]
    req = node.INPUT_TYPES()["required"]
    defaults = {k: v[1]["default"] for k, v in req.items() if k not in ("model", "seed")}
    return node().patch(toy.model, seed_geom, **defaults)[0]


def cow_sample(toy: Toy, text: str, canvas_latent, crop_latent, seed_geom, seed: int, steps: int, cfg: float,
               model=None):
    from comfy_extras.nodes_custom_sampler import SamplerCustom

    cow = conduit_pack.nodes.NODE_CLASS_MAPPINGS
    model = model or toy.model
    sigmas = schedule(toy, steps)
    pos, neg = toy.cond(text), toy.cond("")
    inversion, _ = cow["ConduitCOWInvert"]().invert(model, pos, neg, sigmas, seed_geom, "crop alone", cfg, 0.7,
                                                   crop_latent={"samples": crop_latent})
    sampler = cow["ConduitCOWCycleSampler"]().build(inversion, 10, 0.7, 0.5, 1.0, 0.1, 0.4, "exact", seed)[0]
    out = SamplerCustom().sample(model, False, seed, cfg, pos, neg, sampler, sigmas,
                                 {"samples": canvas_latent.clone()})[0]
    return toy.decode(out["samples"])[0]


def condition(case: int, seed: int) -> world.Sample:
    """The case's condition at the box's size: a speckled shape on gray, speckles drawn from `seed`."""
    (c, s), _ = CASES[case]
    w = BOX[2]
    return world.render(world.Spec(s, c, "speckled", "gray", 32.0, 32.0, 26.0, seed=seed), size=w)


def correlation(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    x, y = a[where].astype(np.float64), b[where].astype(np.float64)
    if x.std() < 1e-6 or y.std() < 1e-6:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def evaluate(toy: Toy, net, cases=range(len(CASES)), seeds: int = 3, steps: int = 10, cfg: float = 4.0):
    seed_node = conduit_pack.nodes.NODE_CLASS_MAPPINGS["ConduitCOWSeedCanvas"]()
    x, y, w, h = BOX
    box = np.zeros((world.SIZE, world.SIZE), bool)
    box[y:y + h, x:x + w] = True
    rows, images = [], []
    for i in cases:
        (c, s), bg = CASES[i]
        cond = condition(i, 900 + i)
        other = condition(i, 1900 + i)  # another speckle draw: the chance level of the identity measure
        cond_img = cond.image.astype(np.float32) / 255
        canvas, crop, _, _, geom = seed_node.make(torch.from_numpy(cond_img)[None], world.SIZE, world.SIZE, x, y, w,
                                                   h, "pixels", "stretch", 0.50196)
        pasted = canvas[0].numpy()
        shape_in_box = np.zeros_like(box)
        shape_in_box[y:y + h, x:x + w] = cond.mask > 0.9
        lum_cond = np.zeros((world.SIZE, world.SIZE), np.float32)
        lum_cond[y:y + h, x:x + w] = cond_img.mean(-1)
        lum_other = np.zeros_like(lum_cond)
        lum_other[y:y + h, x:x + w] = other.image.astype(np.float32).mean(-1) / 255
        canvas_latent, crop_latent = toy.encode(canvas.numpy()), toy.encode(crop.numpy())
        text = world.caption(c, "speckled", s, bg)
        bg_rgb = np.array(world.BACKGROUNDS[bg], np.float32) / 255
        sow = sow_model(toy, geom)
        for k in range(seeds):
            seed = 700 + 10 * i + k
            outs = {"cow": cow_sample(toy, text, canvas_latent, crop_latent, geom, seed, steps, cfg),
                    "sow": cow_sample(toy, text, canvas_latent, crop_latent, geom, seed, steps, cfg, model=sow),
                    "paste+img2img 0.7": toy.generate(text, seed=seed, latent=canvas_latent.clone(), denoise=0.7,
                                                      steps=steps, cfg=cfg, scheduler="ddim_uniform")[0],
                    "paste only": pasted}
            for method, img in outs.items():
                labels, _ = classifier.predict(net, img[None])
                lum = img.mean(-1)
                rows.append({"case": i, "seed": k, "method": method,
                             "identity_r": correlation(lum, lum_cond, shape_in_box),
                             "chance_r": correlation(lum, lum_other, shape_in_box),
                             "outside_bg": float((np.linalg.norm(img - bg_rgb, axis=-1) < 0.15)[~box].mean()),
                             "prompt_background": labels["background"][0] == bg,
                             "region_psnr": measures.psnr(img, pasted, box)})
                if k == 0:
                    images.append(img)
    return rows, images


def summarise(rows: list[dict]) -> tuple[list[dict], dict]:
    summary_rows, found = [], {}

    def col(method, key):
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: (r["case"], r["seed"]))
        return np.array([float(r[key]) for r in rs])

    for method in METHODS:
        summary_rows.append({"method": method, "n": len(col(method, "identity_r")),
                             **{key: stats.fmt(stats.ci(col(method, key))) for key in
                                ("identity_r", "chance_r", "outside_bg", "prompt_background", "region_psnr")}})
        found[f"{method}: identity_r - chance_r"] = stats.paired_diff(col(method, "identity_r"),
                                                                     col(method, "chance_r"))
    for method in ("cow", "sow"):
        for base in ("paste+img2img 0.7", "paste only"):
            for key in ("identity_r", "outside_bg"):
                found[f"{method} - {base}: {key}"] = stats.paired_diff(col(method, key), col(base, key))
    found["sow - cow: identity_r"] = stats.paired_diff(col("sow", "identity_r"), col("cow", "identity_r"))
    found["sow - cow: outside_bg"] = stats.paired_diff(col("sow", "outside_bg"), col("cow", "outside_bg"))
    return summary_rows, found


def run(quick: bool = False) -> dict:
    net = classifier.load()
    toy = load_toy()
    cases = range(3) if quick else range(len(CASES))
    rows, images = evaluate(toy, net, cases, seeds=1 if quick else 4)
    summary_rows, found = summarise(rows)
    # the claim: COW keeps the identity better than the img2img baseline and follows the prompt outside better
    # than pasting
    summary = {"status_identity_vs_img2img": stats.status(found["cow - paste+img2img 0.7: identity_r"]),
               "status_outside_vs_paste": stats.status(found["cow - paste only: outside_bg"]),
               **{k: stats.fmt(v) for k, v in found.items()}}
    report.write("cow", summary, summary_rows + rows, __doc__)
    conds = [condition(i, 900 + i).image.astype(np.float32) / 255 for i in cases]
    tiles = []
    for j, _ in enumerate(cases):
        pad = np.full((world.SIZE, world.SIZE, 3), 0.5, np.float32)
        x, y, w, h = BOX
        pad[y:y + h, x:x + w] = conds[j]
        tiles += [pad] + images[j * len(METHODS):(j + 1) * len(METHODS)]
    report.grid(tiles, 1 + len(METHODS), report.out_dir() / "cow_grid.png",
                labels=["condition | " + " | ".join(METHODS)] * len(cases))
    return {"summary": summary, "by_method": summary_rows, "claims": found}
