"""The model-family seam: what a technique needs to know about a model family is asked here.

A family says how to recognise its models, how its attention layers are laid out (keys, strides for token
grids, heads), where its blocks sit (the hook points: the module that holds a layer, a layer's weight
prefix, the blocks after a layer), and how the published tables' diffusers layer names map to its keys.
Techniques call `family_of(model_patcher, node)` and ask the result; they never test a family's name.
Adding a family means adding a description here, plus its tables and tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConduitError
from .layers import AttentionLayer

BLOCK_ORDER = ("input", "middle", "output")


@dataclass(frozen=True)
class UNetFamily:
    """An SD-style UNet: input blocks, one middle block, output blocks, each optionally holding a
    SpatialTransformer whose BasicTransformerBlocks carry self-attention (attn1) and cross-attention (attn2)."""
    id: str  # what tables record, e.g. "sdxl"
    name: str  # what users read, e.g. "SDXL"
    config_class: str  # the comfy.supported_models class that identifies it
    diffusers_layers_per_block: int = 2  # res/attention pairs per down level in diffusers' names

    def recognises(self, model: Any) -> bool:
        import comfy.supported_models as sm
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        config = getattr(model, "model_config", None)
        return (isinstance(config, getattr(sm, self.config_class))
                and isinstance(getattr(model, "diffusion_model", None), UNetModel))

    def blocks(self, unet: Any) -> list[tuple[str, int, Any]]:
        """(block, id, module) in forward order."""
        seq = [("input", i, m) for i, m in enumerate(unet.input_blocks)]
        if getattr(unet, "middle_block", None) is not None:
            seq.append(("middle", 0, unet.middle_block))
        return seq + [("output", i, m) for i, m in enumerate(unet.output_blocks)]

    def container(self, unet: Any, block: str, block_id: int) -> Any:
        """The block module that holds the layers (block, block_id, *)."""
        if block == "middle":
            return unet.middle_block
        return (unet.input_blocks if block == "input" else unet.output_blocks)[block_id]

    def transformer(self, unet: Any, block: str, block_id: int) -> Any | None:
        """The SpatialTransformer inside that block, or None."""
        from comfy.ldm.modules.attention import SpatialTransformer

        return next((m for m in self.container(unet, block, block_id) if isinstance(m, SpatialTransformer)), None)

    def weight_prefix(self, unet: Any, key: tuple) -> str:
        """State-dict prefix "diffusion_model.<blocks>.<id>.<pos>.transformer_blocks.<index>." of a layer."""
        from comfy.ldm.modules.attention import SpatialTransformer

        block, block_id, index = key
        name = "middle_block" if block == "middle" else f"{block}_blocks.{block_id}"
        module = self.container(unet, block, block_id)
        pos = next(i for i, child in enumerate(module) if isinstance(child, SpatialTransformer))
        return f"diffusion_model.{name}.{pos}.transformer_blocks.{index}."

    def blocks_from(self, unet: Any, first: tuple) -> list[Any]:
        """The modules that run from the block holding `first` (block, id, ...) to the output."""
        seq = self.blocks(unet)
        start = next(i for i, (b, bid, _) in enumerate(seq) if (b, bid) == (first[0], first[1]))
        mods = [m for _, _, m in seq[start:]]
        for name in ("out", "id_predictor"):
            extra = getattr(unet, name, None)
            if extra is not None:
                mods.append(extra)
        return mods

    def attention_layers(self, unet: Any) -> list[AttentionLayer]:
        """Every BasicTransformerBlock, in forward order, with its key and feature-map stride."""
        from comfy.ldm.modules.attention import SpatialTransformer
        from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

        layers: list[AttentionLayer] = []
        stride = 1
        for block_name, block_id, module in self.blocks(unet):
            for child in module:
                if isinstance(child, SpatialTransformer):
                    for index, tb in enumerate(child.transformer_blocks):
                        layers.append(AttentionLayer(
                            block_name, block_id, index, len(layers), stride, tb.attn1.heads,
                            tb.attn1.to_q.out_features // tb.attn1.heads, tb.attn2 is not None))
                elif isinstance(child, Downsample):
                    stride *= 2
                elif isinstance(child, Upsample):
                    stride //= 2
        return layers

    def diffusers_key(self, name: str) -> tuple:
        from ..tables.tables_math import diffusers_attn1_key

        return diffusers_attn1_key(name, self.diffusers_layers_per_block)


# Checked in this order: a subclass's family comes before its base's.
FAMILIES: tuple[UNetFamily, ...] = (
    UNetFamily("sdxl", "SDXL", "SDXL"),
    UNetFamily("sd2", "SD2.x", "SD20"),
    UNetFamily("sd15", "SD1.x", "SD15"),
)
FAMILY_NAMES = {f.id: f.name for f in FAMILIES}


def family_by_id(family_id: str) -> UNetFamily | None:
    return next((f for f in FAMILIES if f.id == family_id), None)


def family_of(model_patcher: Any, node: str) -> UNetFamily:
    """The family of a ModelPatcher (only `.model` is read); a ConduitError naming the node for anything
    unsupported."""
    return family_of_model(model_patcher.model, node)


def family_of_model(model: Any, node: str) -> UNetFamily:
    """The same for a comfy BaseModel (what samplers and apply-model wrappers see)."""
    for family in FAMILIES:
        if family.recognises(model):
            return family
    config = getattr(model, "model_config", None)
    name = type(config).__name__ if config is not None else type(model).__name__
    names = [f.name for f in reversed(FAMILIES)]  # oldest first, as users list them
    raise ConduitError(node, f"model family {name} is not supported.",
                       f"use a {', '.join(names[:-1])} or {names[-1]} checkpoint (supported: {', '.join(names)}).")
