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


def column(rows: list[dict], run: str, key: str) -> np.ndarray:
    """One run's values of `key` in (pair, seed) order, so two runs pair up unit by unit."""
    return np.array([float(r[key]) for r in sorted((r for r in rows if r["run"] == run),
                                                    key=lambda r: (r["pair"], r["seed"]))])


SHIFTS = (0.0, 2.0, 5.0)  # reference_attention_shift: the default, then e^2 and e^5 times the reference's mass


def attention_mass(toy: Toy, net, pairs, seeds: int, steps: int, quick: bool) -> tuple[list[dict], dict]:
    """Balanced Style at lambda_S 1 (every layer, so the table's ranking plays no part) with more attention on the
    reference: reference_attention_shift adds to the reference tokens' logits. If the colour then moves as in
    the swap, the patch carries the reference's style and what holds it back at the default is how little of
    each image's attention goes to the reference while its own tokens are there too (StyleAligned shares
    attention, the swap replaces it). A diagnostic only: the claim's experiment uses the node's defaults."""
    table = eval_cb.saved_toy_table(toy, quick, steps)
    rows = []
    for shift in SHIFTS:
        for p, (content, style) in enumerate(pairs):
            ref = eval_cb.reference_image(style, content[1], p)
            model = eval_cb.styled_model(toy, 1.0, ref, table, shift=shift)
            imgs = np.concatenate([toy.generate(eval_cb.content_caption(content), seed=300 + 10 * p + k,
                                                model=model, steps=steps) for k in range(seeds)])
            labels, _ = classifier.predict(net, imgs)
            rows += [{"pair": p, "seed": k, "run": f"balanced style 1.0, shift {shift:g}",
                      "a_takes_b_color": labels["color"][k] == style[0],
                      "a_takes_b_texture": labels["texture"][k] == style[1],
                      "a_keeps_shape": labels["shape"][k] == content[0]} for k in range(seeds)]
    base = f"balanced style 1.0, shift {SHIFTS[0]:g}"
    out = {f"{r}: {key}": float(column(rows, r, key).mean()) for r in dict.fromkeys(x["run"] for x in rows)
           for key in ("a_takes_b_color", "a_keeps_shape")}
    for shift in SHIFTS[1:]:
        run = f"balanced style 1.0, shift {shift:g}"
        diff = stats.paired_diff(column(rows, run, "a_takes_b_color"), column(rows, base, "a_takes_b_color"))
        out[f"{run} - shift 0: a_takes_b_color"] = stats.fmt(diff)
    return rows, out


def run(quick: bool = False) -> dict:
    net = classifier.load()
    toy = load_toy()
    steps = 10 if quick else 20
    pairs = eval_cb.PAIRS[:4] if quick else eval_cb.PAIRS
    seeds = 1 if quick else 3
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

    found = {f"swap - no swap: {key}": stats.paired_diff(column(rows, "swap", key), column(rows, "no swap", key))
             for key in ("a_takes_b_color", "a_takes_b_texture", "a_keeps_shape")}
    summary = {"status_color": stats.status(found["swap - no swap: a_takes_b_color"]),
               **{k: stats.fmt(v) for k, v in found.items()},
               **{f"{run}: {key}": float(column(rows, run, key).mean()) for run in ("no swap", "swap")
                  for key in ("a_takes_b_color", "a_takes_b_texture", "a_keeps_shape", "b_is_b")}}
    mass_rows, mass = attention_mass(toy, net, pairs, seeds, steps, quick)
    summary.update(mass)
    report.write("kv_swap", summary, rows + mass_rows, __doc__)
    report.grid(images, 4, report.out_dir() / "kv_swap_grid.png",
                labels=["A no swap | B no swap | A swap | B swap"] * len(pairs))
    return {"summary": summary, "claims": found}
