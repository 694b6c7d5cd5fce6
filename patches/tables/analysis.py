"""Sensitivity analysis: sample groups of prompts/images while hooks record per-layer q/k/v token statistics,
then grade every (timestep, layer, feature) and return a SensitivityTable.

Hooks are attn1 replaces on every self-attention layer of a UNet, and joint-attention ops on every block of a
DiT (SD3's joint blocks, Flux's double and single blocks: the image tokens' q, k, v after SD3's q/k norms and
Flux's RoPE, as the official SD3.5 port records them), chained to whatever is already installed, so the
statistics are those of the q, k, v that attention really sees.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .analysis_math import (
    FEATURES, KINDS, StatsStore, StoreShape, check_groups, grade_store, merge_duplicate_timesteps, parse_groups,
    token_stats,
)
from ..engine.attention import set_replace
from ..engine.batch import COND, UNCOND, chunk_slices
from ..engine.dit_attention import JointCall, image_tokens, set_block_op
from ..engine.errors import ConduitError
from ..engine.families import family_of
from ..engine.layers import AttentionLayer, attention_layers
from .tables_math import SensitivityTable

log = logging.getLogger(__name__)
Progress = Callable[[int], None]
TRANSFORMER_KEY = "conduit_analysis"  # transformer_options entry naming the image group being sampled
KINDS_OF_MODEL = ("unet", "dit")  # UNets' attn1 layers, DiTs' attention blocks


@dataclass
class AnalysisItem:
    """One sampling run: a prompt (conditioning) sampled once per seed, all images in one group."""
    group: int
    positive: Any
    negative: Any
    seeds: list[int]
    latent: torch.Tensor | None = None  # [1, C, h, w] image latent: probe it at each step instead of sampling
    label: str = ""


@dataclass
class AnalysisSettings:
    steps: int = 20
    cfg: float = 5.0
    sampler: str = "euler"
    scheduler: str = "normal"
    latent_hw: tuple[int, int] = (128, 128)
    dimension: str = "style"
    provenance: dict = field(default_factory=dict)


def prompt_items(encode: Callable[[str], Any], groups: str, content: str, negative: Any, samples: int,
                 seed: int) -> list[AnalysisItem]:
    """Items for text groups: '<content>, <prompt>' sampled with seeds seed .. seed+samples-1 in every group."""
    items = []
    for g, prompts in enumerate(parse_groups(groups)):
        for p in prompts:
            text = f"{content}, {p}" if content.strip() else p
            items.append(AnalysisItem(g, encode(text), negative, [seed + j for j in range(samples)], label=p))
    return items


def image_items(latents: Sequence[torch.Tensor], per_group: int, first_group: int, positive: Any, negative: Any,
                seed: int) -> list[AnalysisItem]:
    """Items for images: consecutive runs of per_group images form a group; all share one noise seed."""
    return [AnalysisItem(first_group + i // per_group, positive, negative, [seed], latent=lat, label=f"image {i + 1}")
            for i, lat in enumerate(latents)]


class StatsCollector:
    """attn1 replaces that write token mean/std of q, k, v into the current run's buffer."""

    def __init__(self, layers: Sequence[AttentionLayer], sigmas: torch.Tensor) -> None:
        self.layers = list(layers)
        self.channels = [layer.heads * layer.dim_head for layer in self.layers]
        self.offsets: dict[tuple, tuple[int, int]] = {}
        start = 0
        for layer, c in zip(self.layers, self.channels):
            self.offsets[layer.key] = (start, start + c)
            start += c
        self.total_channels = start
        self.sigmas = sigmas.detach().float().cpu()
        self.steps = len(self.sigmas) - 1
        self.buf: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        self.batch = 0

    def install(self, model_patcher) -> Any:
        m = model_patcher.clone()
        for layer in self.layers:
            if layer.is_dit:
                set_block_op(m, layer.key[:2], self._joint_op(layer.key), TRANSFORMER_KEY)
            else:
                set_replace(m, "attn1", layer.key, self._make(layer.key))
        return m

    def _joint_op(self, key: tuple):
        a, b = self.offsets[key]

        def record_then_attend(call: JointCall) -> torch.Tensor:
            if self.seen is not None:
                self._record(image_tokens(call.q, call), image_tokens(call.k, call), image_tokens(call.v, call),
                             call.options, a, b)
            return call.attend(call.q, call.k, call.v)
        return record_then_attend

    def begin(self, batch: int) -> None:
        self.batch = batch
        self.buf = None
        self.seen = torch.zeros(self.steps, KINDS, dtype=torch.bool)

    def end(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        buf, seen = self.buf, self.seen
        self.buf, self.seen = None, None
        return buf, seen

    def step_of(self, sigma: float) -> int | None:
        """Schedule step evaluated at exactly this sigma; None for a sampler's in-between evaluations."""
        diff = (self.sigmas[:-1] - sigma).abs()
        i = int(torch.argmin(diff))
        return i if float(diff[i]) <= 1e-3 * max(abs(sigma), 1e-6) else None

    def _make(self, key: tuple):
        a, b = self.offsets[key]

        def make(inner):
            def record_then_attend(q, k, v, extra_options):
                if self.seen is not None:
                    self._record(q, k, v, extra_options, a, b)
                return inner(q, k, v, extra_options)
            return record_then_attend
        return make

    def _record(self, q, k, v, extra: dict, a: int, b: int) -> None:
        sigmas = extra.get("sigmas")
        if sigmas is None:
            return
        step = self.step_of(float(torch.as_tensor(sigmas).flatten()[0]))
        if step is None:
            return
        if self.buf is None:
            self.buf = torch.zeros(self.batch, self.steps, len(FEATURES), KINDS, 2, self.total_channels,
                                   device=q.device, dtype=torch.float32)
        cou = extra.get("cond_or_uncond") or [COND]
        for kind, rows in chunk_slices(q.shape[0], cou):
            if kind not in (COND, UNCOND) or rows.stop - rows.start != self.batch:
                continue
            slot = 1 if kind == COND else 0
            for fi, x in enumerate((q, k, v)):
                mu, sd = token_stats(x[rows])
                self.buf[:, step, fi, slot, 0, a:b] = mu
                self.buf[:, step, fi, slot, 1, a:b] = sd
            self.seen[step, slot] = True


def schedule_sigmas(model_patcher, steps: int, sampler: str, scheduler: str) -> torch.Tensor:
    """The sigmas a KSampler node would use (both hosts)."""
    from ..engine.host import ksampler_sigmas

    return ksampler_sigmas(model_patcher, steps, sampler, scheduler, 1.0, model_patcher.load_device)


def model_timesteps(model_patcher, sigmas: torch.Tensor, node: str = "Conduit") -> list[int]:
    """Table timestep of every evaluated step: the model's own (0..999) for UNets, sigma * 1000 for DiTs."""
    from ..engine.families import family_of
    from ..engine.host import model_sampling

    family = family_of(model_patcher, node, KINDS_OF_MODEL)
    t = family.table_timestep(model_sampling(model_patcher), sigmas[:-1].to(torch.float32))
    return [int(round(float(x))) for x in torch.as_tensor(t).flatten()]


def check_items(items: Sequence[AnalysisItem], node: str) -> list[int]:
    """Group label of every image; ConduitError for empty or ungradeable groups."""
    if not items:
        raise ConduitError(node, "no prompts or images to analyse.",
                           "give at least two groups (one per line) and samples per group >= 2.")
    labels = []
    for item in items:
        if not item.seeds:
            raise ConduitError(node, f"group {item.group + 1} ({item.label or 'unnamed'}) has no samples.",
                               "set samples per group to 1 or more.")
        labels += [item.group] * len(item.seeds)
    problem = check_groups(labels)
    if problem:
        raise ConduitError(node, f"cannot grade: {problem}.",
                           "give two or more groups (one per line) and samples per group >= 2 "
                           "(or two or more images per group).")
    return labels


def _check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException when /interrupt was called (every loop iteration)."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def _ticker(progress: Progress | None) -> Callable[..., None]:
    """A sampler callback / grading tick: checks for an interrupt, then advances the progress bar."""
    def tick(*_: Any) -> None:
        _check_interrupt()
        if progress is not None:
            progress(1)
    return tick


def _noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))


def _sample(model, noise, latent, positive, negative, sigmas, settings: AnalysisSettings, seed: int, callback):
    import comfy.sample

    return comfy.sample.sample(model, noise, len(sigmas) - 1, settings.cfg, settings.sampler, settings.scheduler,
                               positive, negative, latent, denoise=1.0, sigmas=sigmas, callback=callback,
                               disable_pbar=True, seed=seed)


def collect(model_patcher, items: Sequence[AnalysisItem], settings: AnalysisSettings, node: str,
            progress: Progress | None = None) -> tuple[StatsStore, StatsCollector, list[int]]:
    """Run every item through real sampling with the statistics hooks; returns the filled store."""
    from ..engine.host import options_with_transformer_keys

    labels = check_items(items, node)
    layers = attention_layers(model_patcher, node, KINDS_OF_MODEL)
    sigmas = schedule_sigmas(model_patcher, settings.steps, settings.sampler, settings.scheduler)
    collector = StatsCollector(layers, sigmas)
    hooked = collector.install(model_patcher)
    store = StatsStore(StoreShape(len(labels), collector.steps, collector.total_channels))
    channels = getattr(model_patcher.model.latent_format, "latent_channels", 4)
    tick = _ticker(progress)
    image = 0
    for item in items:
        _check_interrupt()
        run_model = hooked.clone()
        run_model.model_options = options_with_transformer_keys(
            run_model.model_options, **{TRANSFORMER_KEY: {"group": item.group, "label": item.label}})
        n = len(item.seeds)
        noise = torch.cat([_noise((1, channels, *settings.latent_hw), s) for s in item.seeds])
        collector.begin(n)
        if item.latent is None:
            latent = torch.zeros_like(noise)
            _sample(run_model, noise, latent, item.positive, item.negative, sigmas, settings, item.seeds[0], tick)
        else:
            # An image is probed, not regenerated: at every step it is noised to that step's sigma and
            # evaluated once, so its statistics describe the image itself along the whole schedule.
            latent = item.latent.expand(n, -1, -1, -1).contiguous()
            if tuple(latent.shape[-2:]) != tuple(noise.shape[-2:]):
                noise = torch.cat([_noise((1, *latent.shape[1:]), s) for s in item.seeds])
            for s in range(collector.steps):
                _check_interrupt()
                _sample(run_model, noise, latent, item.positive, item.negative, sigmas[s:s + 2], settings,
                        item.seeds[0], None)
                tick()
        buf, seen = collector.end()
        if buf is None:
            raise ConduitError(node, "the statistics hooks never ran during sampling.",
                               "another node may have replaced self-attention without chaining; "
                               "analyse the plain model.")
        store.write_run(range(image, image + n), buf, seen)
        image += n
    return store, collector, labels


def analyse(model_patcher, items: Sequence[AnalysisItem], settings: AnalysisSettings, node: str,
            progress: Progress | None = None, grade_device: torch.device | None = None) -> SensitivityTable:
    """Collect statistics for every item, grade them, and build the table."""
    family = family_of(model_patcher, node, KINDS_OF_MODEL)
    t0 = time.monotonic()
    store, collector, labels = collect(model_patcher, items, settings, node, progress)
    t1 = time.monotonic()
    try:
        scores = grade_store(store, labels, collector.channels, progress=_ticker(progress), device=grade_device)
        timesteps = model_timesteps(model_patcher, collector.sigmas, node)
        missing = [s for s in range(collector.steps) if math.isnan(float(scores["q"][s, 0]))]
    finally:
        store.close()
    if missing:
        raise ConduitError(node, f"no statistics were recorded at step(s) {missing[:8]} of the schedule.",
                           "use a sampler that evaluates the model at every schedule step (euler, dpmpp_2m, ...).")
    timesteps, scores = merge_duplicate_timesteps(timesteps, scores)
    groups = sorted({i.group for i in items})
    provenance = {
        "source": "Conduit sensitivity analysis",
        "score": "mean within-group / mean between-group diagonal-Gaussian JSD (explicit group labels)",
        "groups": [[i.label for i in items if i.group == g] for g in groups],
        "image_count": len(labels),
        "samples_per_item": sorted({len(i.seeds) for i in items}),
        "inputs": "images" if any(i.latent is not None for i in items) else "prompts",
        "steps": settings.steps, "cfg": settings.cfg, "sampler": settings.sampler,
        "scheduler": settings.scheduler, "latent_hw": list(settings.latent_hw),
        "collect_seconds": round(t1 - t0, 2), "grade_seconds": round(time.monotonic() - t1, 2),
        **settings.provenance,
    }
    names = [family.diffusers_name(layer.key) if layer.is_dit else _ldm_name(layer) for layer in collector.layers]
    return SensitivityTable(
        family=family.id, dimension=settings.dimension, layer_keys=[layer.key for layer in collector.layers],
        timesteps=timesteps, scores=scores, source_names=names, provenance=provenance)


def _ldm_name(layer: AttentionLayer) -> str:
    block = {"input": "input_blocks", "middle": "middle_block", "output": "output_blocks"}[layer.block]
    where = f"{block}.{layer.block_id}" if layer.block != "middle" else block
    return f"{where}.1.transformer_blocks.{layer.index}.attn1"
