"""Cyclic One-Way Diffusion on the toy model: keep a visual condition in its box, follow the text elsewhere.

The condition is a procedural shape on a gray background, stretched into a 40x40 box of a 64x64 gray seed
canvas (Conduit COW Seed Canvas). The prompt asks for the same shape, colour and texture on a different
background. COW (Invert 'crop alone' + Cycle Sampler + SamplerCustom, the shipped workflow's settings,
10 ddim_uniform steps, cfg 4) is compared with inpainting-style pasting: the same seed canvas through plain
img2img at denoise 0.7 (COW's cycle start), and the pasted canvas itself (denoise 0).
  * condition-region fidelity: PSNR / SSIM inside the box against the pasted condition;
  * agreement of the rest: ToyNet reads the prompt's background (the part outside the condition), and
    the condition's shape and colour.
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

log = logging.getLogger(__name__)

BOX = (8, 16, 40, 40)  # x, y, w, h in pixels, on the 8 px latent grid
# condition (colour, texture, shape) on gray -> prompt background
CASES = (
    (("red", "solid", "circle"), "black"),
    (("blue", "striped", "square"), "white"),
    (("yellow", "dotted", "star"), "black"),
    (("green", "checkered", "triangle"), "beige"),
    (("purple", "solid", "ring"), "white"),
    (("orange", "speckled", "circle"), "beige"),
)


def schedule(toy: Toy, steps: int, scheduler: str = "ddim_uniform") -> torch.Tensor:
    import comfy.samplers

    target = toy.model if hasattr(toy.model, "get_model_object") else toy.model.model
    return comfy.samplers.KSampler(target, steps=steps, device="cpu", sampler="euler", scheduler=scheduler,
                                   denoise=1.0, model_options=toy.model.model_options).sigmas.cpu()


def cow_sample(toy: Toy, text: str, canvas_latent, crop_latent, seed_geom, seed: int, steps: int, cfg: float):
    from comfy_extras.nodes_custom_sampler import SamplerCustom

    cow = conduit_pack.nodes.NODE_CLASS_MAPPINGS
    sigmas = schedule(toy, steps)
    pos, neg = toy.cond(text), toy.cond("")
    inversion, _ = cow["ConduitCOWInvert"]().invert(toy.model, pos, neg, sigmas, seed_geom, "crop alone", cfg, 0.7,
                                                   crop_latent={"samples": crop_latent})
    sampler = cow["ConduitCOWCycleSampler"]().build(inversion, 10, 0.7, 0.5, 1.0, 0.1, 0.4, "exact", seed)[0]
    out = SamplerCustom().sample(toy.model, False, seed, cfg, pos, neg, sampler, sigmas,
                                 {"samples": canvas_latent.clone()})[0]
    return toy.decode(out["samples"])[0]


def evaluate(toy: Toy, net, cases=CASES, seeds: int = 2, steps: int = 10, cfg: float = 4.0):
    seed_node = conduit_pack.nodes.NODE_CLASS_MAPPINGS["ConduitCOWSeedCanvas"]()
    x, y, w, h = BOX
    box = np.zeros((world.SIZE, world.SIZE), bool)
    box[y:y + h, x:x + w] = True
    rows, images = [], []
    for i, ((c, t, s), bg) in enumerate(cases):
        cond = world.render(world.Spec(s, c, t, "gray", 32.0, 32.0, 26.0, seed=i)).image.astype(np.float32) / 255
        canvas, crop, _, _, geom = seed_node.make(torch.from_numpy(cond)[None], world.SIZE, world.SIZE, x, y, w, h,
                                                   "pixels", "stretch", 0.50196)
        pasted = canvas[0].numpy()
        canvas_latent, crop_latent = toy.encode(canvas.numpy()), toy.encode(crop.numpy())
        text = world.caption(c, t, s, bg)
        for k in range(seeds):
            seed = 700 + 10 * i + k
            outs = {"cow": cow_sample(toy, text, canvas_latent, crop_latent, geom, seed, steps, cfg),
                    "paste+img2img 0.7": toy.generate(text, seed=seed, latent=canvas_latent.clone(), denoise=0.7,
                                                      steps=steps, cfg=cfg, scheduler="ddim_uniform")[0],
                    "paste only": pasted}
            for method, img in outs.items():
                labels, _ = classifier.predict(net, img[None])
                rows.append({"case": i, "seed": k, "method": method,
                             "region_psnr": measures.psnr(img, pasted, box),
                             "region_ssim": measures.ssim(img, pasted, box),
                             "prompt_background": labels["background"][0] == bg,
                             "shape_kept": labels["shape"][0] == s, "color_kept": labels["color"][0] == c})
                if k == 0:
                    images.append(img)
    summary_rows = []
    for method in ("cow", "paste+img2img 0.7", "paste only"):
        rs = [r for r in rows if r["method"] == method]
        summary_rows.append({"method": method, **{m: float(np.mean([r[m] for r in rs])) for m in (
            "region_psnr", "region_ssim", "prompt_background", "shape_kept", "color_kept")}})
    return summary_rows, rows, images


def run(quick: bool = False) -> dict:
    net = classifier.load()
    toy = load_toy()
    summary_rows, rows, images = evaluate(toy, net, cases=CASES[:2] if quick else CASES, seeds=1 if quick else 2)
    report.write("cow", {"rows": len(rows)}, summary_rows + rows, __doc__)
    report.grid(images, 3, report.out_dir() / "cow_grid.png")
    return {"by_method": summary_rows}
