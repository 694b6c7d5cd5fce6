"""Toy model quality: does a caption give the asked-for shape, colour, texture and background?

Measured on held-out (colour, texture, shape) triples never seen in training and on training triples,
with ToyNet labels, the palette distance, and the toy Fréchet distance to procedural images of the
same captions. A random-weight UNet (same CLIP and VAE) is the floor.
"""
from __future__ import annotations

import logging

import numpy as np

from conduit_pack.toyworld import world

from . import classifier, measures, report, stats
from .gen import Toy

log = logging.getLogger(__name__)


def reference_images(captions: list[tuple[str, str, str, str]], per: int, seed: int = 7) -> np.ndarray:
    """Procedural images of each (colour, texture, shape, background), positions drawn at random."""
    out = []
    for i, (c, t, s, b) in enumerate(captions):
        for j in range(per):
            bg = world.SCENES[(i + j) % len(world.SCENES)] if b == SCENE else b
            out.append(world.sample(i * 1000 + j, seed, "all", color=c, texture=t, shape=s, background=bg).image)
    return np.stack(out).astype(np.float32) / 255.0


SCENE = "scene"  # a caption without a background phrase: the model draws one of world.SCENES


def caption_text(c: str, t: str, s: str, b: str) -> str:
    return world.caption(c, t, s, None if b == SCENE else b)


def background_ok(read: str, asked: str) -> bool:
    return read in world.SCENES if asked == SCENE else read == asked


def captions_for(split: str, limit: int | None = None, seed: int = 0,
                 backgrounds: tuple[str, ...] = (*world.BACKGROUNDS, SCENE)) -> list[tuple[str, str, str, str]]:
    caps = [(c, t, s, b) for (c, t, s) in world.all_triples(split) for b in backgrounds]
    if limit is not None and len(caps) > limit:
        rng = np.random.default_rng(seed)
        caps = [caps[i] for i in sorted(rng.choice(len(caps), limit, replace=False))]
    return caps


def evaluate(toy: Toy, net, captions, seeds: int = 4, base_seed: int = 0, **sample_kw) -> tuple[dict, list[dict], list]:
    rows, images, feats = [], [], []
    for i, (c, t, s, b) in enumerate(captions):
        text = caption_text(c, t, s, b)
        imgs = toy.generate(text, seed=base_seed + i, batch=seeds, **sample_kw)
        labels, f = classifier.predict(net, imgs)
        feats.append(f)
        images.extend(imgs)
        for k, img in enumerate(imgs):
            rows.append({"caption": text, "seed": k,
                         "shape": labels["shape"][k], "color": labels["color"][k], "texture": labels["texture"][k],
                         "background": labels["background"][k],
                         "shape_ok": labels["shape"][k] == s, "color_ok": labels["color"][k] == c,
                         "texture_ok": labels["texture"][k] == t,
                         "background_ok": background_ok(labels["background"][k], b),
                         "asked": (c, t, s, b),
                         "palette_dist": measures.palette_distance(img, c)})
    ref = reference_images(captions, seeds)
    _, ref_feats = classifier.predict(net, ref)
    summary = {key: float(np.mean([r[f"{key}_ok"] for r in rows]))
               for key in ("shape", "color", "texture", "background")}
    summary["all_ok"] = float(np.mean([r["shape_ok"] and r["color_ok"] and r["texture_ok"] and r["background_ok"]
                                       for r in rows]))
    summary["palette_dist"] = float(np.nanmean([r["palette_dist"] for r in rows]))
    summary["fd"] = measures.frechet_distance(np.concatenate(feats), ref_feats)
    summary["n"] = len(rows)
    return summary, rows, images


def per_word(rows: list[dict]) -> list[dict]:
    """Accuracy per asked-for word (colour, texture, shape, background), with its bootstrap interval."""
    out = []
    for pos, attr, words in ((0, "color", world.COLORS), (1, "texture", world.TEXTURES), (2, "shape", world.SHAPES),
                             (3, "background", (*world.BACKGROUNDS, SCENE))):
        for w in words:
            hits = [float(r[f"{attr}_ok"]) for r in rows if r["asked"][pos] == w]
            if hits:
                est, lo, hi = stats.ci(hits)
                out.append({"attribute": attr, "word": w, "accuracy": est, "ci_low": lo, "ci_high": hi,
                            "n": len(hits)})
    return out


def texture_confusion(rows: list[dict]) -> list[dict]:
    """For each asked-for texture, the share of images ToyNet read as each texture: where a missed word goes
    (drawn as another texture, or as solid) says whether the model blurs it or confuses it."""
    out = []
    for asked in world.TEXTURES:
        read = [r["texture"] for r in rows if r["asked"][1] == asked]
        if read:
            out.append({"asked_texture": asked, **{f"read_{t}": read.count(t) / len(read) for t in world.TEXTURES},
                        "n": len(read)})
    return out


def vae_ceiling(toy, net, captions, per: int, ref: np.ndarray) -> dict[str, float]:
    """What ToyNet reads when the image is perfect up to the toy VAE: procedural images of the captions, encoded
    and decoded by the model's own VAE. No UNet can score above this through this VAE and this reader, so it
    separates "the model has not learnt the word" from "the measure cannot see it"."""
    rec = toy.round_trip(ref)
    truth = [c for c in captions for _ in range(per)]
    out = {}
    for name, images in (("procedural", ref), ("vae_roundtrip", rec)):
        labels, _ = classifier.predict(net, images)
        for k, key in ((0, "color"), (1, "texture"), (2, "shape")):
            out[f"{name}_{key}"] = float(np.mean([labels[key][i] == t[k] for i, t in enumerate(truth)]))
            if name == "vae_roundtrip":  # per word, beside the model's per-word table
                for word in sorted({t[k] for t in truth}):
                    hits = [labels[key][i] == word for i, t in enumerate(truth) if t[k] == word]
                    out[f"{name}_{key}_{word}"] = float(np.mean(hits))
    out["n"] = len(truth)
    return out


def run(quick: bool = False) -> dict:
    from .gen import load_toy

    net = classifier.load()
    seeds = 2 if quick else 4
    results = {}
    toy = load_toy()
    splits = {"heldout": captions_for("heldout", 8 if quick else None),
              "train": captions_for("train", 8 if quick else 12)}
    for name, caps in splits.items():
        summary, rows, images = evaluate(toy, net, caps, seeds)
        results[name] = summary
        words = per_word(rows)
        results[f"{name}_per_word"] = words
        results[f"{name}_texture_confusion"] = confusion = texture_confusion(rows)
        for r in rows:
            r["asked"] = " ".join(r["asked"])
        report.write(f"quality_{name}", summary, words + confusion + rows, __doc__)
        report.grid(images[: 16 * seeds], seeds * 4, report.out_dir() / f"quality_{name}.png", scale=2)
    rand = load_toy(random_unet_seed=0)
    summary, rows, _ = evaluate(rand, net, captions_for("heldout", 8, seed=5), 2)
    results["random_unet_heldout"] = summary
    report.write("quality_random_unet", summary, rows, "Random-weight UNet, same text encoder and VAE: the floor.")
    ref = reference_images(splits["heldout"], seeds, seed=11)
    results["toynet_on_procedural"] = classifier.accuracy_on_procedural(net)
    results["ceiling_heldout"] = vae_ceiling(toy, net, splits["heldout"], seeds, ref)
    report.write("quality_ceiling", results["ceiling_heldout"], [], vae_ceiling.__doc__)
    table = [{"model": k, **{m: v for m, v in s.items()}} for k, s in results.items()
             if isinstance(s, dict) and "fd" in s]
    report.write("quality", {"chance_shape": 1 / len(world.SHAPES), "chance_color": 1 / len(world.COLORS),
                             "chance_texture": 1 / len(world.TEXTURES), **{f"toynet_{k}": v for k, v in
                                                                          results["toynet_on_procedural"].items()}},
                 table, __doc__)
    report.grid(list(ref[: 8 * seeds]), seeds * 4, report.out_dir() / "quality_reference.png", scale=2)
    return results
