"""Diagnostic: does self-attention carry style in the toy UNet at all?

Balanced Style can only move style through self-attention. This probe asks the model directly, without
any Conduit code: two images are sampled side by side in one batch, A from a prompt that leaves the style
open ("a star on a white background") and B from a full caption of another style and shape ("a blue
striped square on a white background"). In the swap run, every self-attention layer of A attends with B's
keys and values (its own queries), at every step and in both CFG branches. If A then takes B's colour or
texture far more often than without the swap, self-attention does carry style in this model, and a flat
Balanced Style curve would point at the technique; if not, the proxy cannot show it.
Same pairs as the cb suite (eval_cb.PAIRS), 20 steps, cfg 4; intervals: 95 % bootstrap over
(pair, seed), paired between swap and no swap.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from conduit_pack.toyworld import world

from . import classifier, eval_cb, gen, report, stats
from .gen import Toy, load_toy

log = logging.getLogger(__name__)

TOY_ATTN1 = (("input", 1), ("input", 3), ("middle", 0), ("output", 0), ("output", 1), ("output", 2),
             ("output", 3))


def swap_model(toy: Toy):
    """The toy UNet where batch item 0 of every CFG chunk attends with item 1's self-attention keys/values."""
    from comfy.ldm.modules.attention import optimized_attention

    def attn1(q, k, v, extra):
        chunks = len(extra.get("cond_or_uncond", [0])) or 1
        k2 = k.clone().view(chunks, -1, *k.shape[1:])
        v2 = v.clone().view(chunks, -1, *v.shape[1:])
        k2[:, 0], v2[:, 0] = k2[:, 1], v2[:, 1]
        return optimized_attention(q, k2.view_as(k), v2.view_as(v), extra["n_heads"])

    m = toy.model.clone()
    for block, number in TOY_ATTN1:
        m.set_model_attn1_replace(attn1, block, number)
    return m


def pair_sample(toy: Toy, model, text_a: str, text_b: str, seed: int, steps: int) -> np.ndarray:
    from conduit import testing

    ca, cb = toy.cond(text_a)[0][0], toy.cond(text_b)[0][0]
    pos = [[torch.cat([ca, cb]), {}]]
    neg_c = toy.cond("")[0][0]
    neg = [[torch.cat([neg_c, neg_c]), {}]]
    lat = testing.sample(model, pos, neg, latent_hw=gen.LATENT_HW, batch=2, steps=steps, cfg=gen.CFG,
                         sampler=gen.SAMPLER, scheduler=gen.SCHEDULER, seed=seed)
    return toy.decode(lat)


def run(quick: bool = False) -> dict:
    net = classifier.load()
    toy = load_toy()
    steps = 10 if quick else 20
    pairs = eval_cb.PAIRS[:4] if quick else eval_cb.PAIRS
    seeds = 1
    swapped = swap_model(toy)
    rows, images = [], []
    for p, (content, style) in enumerate(pairs):
        c, t, s = style
        text_b = world.caption(c, t, s, content[1])
        for k in range(seeds):
            seed = 300 + 10 * p + k
            for name, model in (("no swap", toy.model), ("swap", swapped)):
                imgs = pair_sample(toy, model, eval_cb.content_caption(content), text_b, seed, steps)
                labels, _ = classifier.predict(net, imgs)
                rows.append({"pair": p, "seed": k, "run": name,
                             "a_takes_b_color": labels["color"][0] == c,
                             "a_takes_b_texture": labels["texture"][0] == t,
                             "a_keeps_shape": labels["shape"][0] == content[0],
                             "b_is_b": labels["color"][1] == c and labels["shape"][1] == s})
                if k == 0:
                    images.extend(imgs)

    def col(run, key):
        return np.array([float(r[key]) for r in sorted((r for r in rows if r["run"] == run),
                                                        key=lambda r: (r["pair"], r["seed"]))])

    found = {f"swap - no swap: {key}": stats.paired_diff(col("swap", key), col("no swap", key))
             for key in ("a_takes_b_color", "a_takes_b_texture", "a_keeps_shape")}
    summary = {"status_color": stats.status(found["swap - no swap: a_takes_b_color"]),
               **{k: stats.fmt(v) for k, v in found.items()},
               **{f"{run}: {key}": float(col(run, key).mean()) for run in ("no swap", "swap")
                  for key in ("a_takes_b_color", "a_takes_b_texture", "a_keeps_shape", "b_is_b")}}
    report.write("kv_swap", summary, rows, __doc__)
    report.grid(images, 4, report.out_dir() / "kv_swap_grid.png",
                labels=["A no swap | B no swap | A swap | B swap"] * len(pairs))
    return {"summary": summary, "claims": found}
