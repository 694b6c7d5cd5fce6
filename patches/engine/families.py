"""The model-family seam: what a technique needs to know about a model family is asked here.

A family says how to recognise its models, how its attention layers are laid out (keys, strides for token
grids, heads), where its blocks sit (the hook points: the module that holds a layer, a layer's weight
prefix, the blocks after a layer), and how the published tables' diffusers layer names map to its keys.
Techniques call `family_of(model_patcher, node, kinds)` and ask the result; they never test a family's name.
`kinds` says which kinds of family a technique has been built and tested for ("unet", "dit"): a model of
another kind gets a clear refusal that names the node, instead of a patch that silently does nothing.
Adding a family means adding a description here, plus its tables and tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConduitError
from .layers import AttentionLayer

UNET, DIT = "unet", "dit"

BLOCK_ORDER = ("input", "middle", "output")


def has_model_parts(model: Any) -> bool:
    """Whether the object carries a model config and a diffusion model at all: anything else (a stand-in, a
    foreign wrapper) is no family's, and telling so needs no ComfyUI import."""
    return getattr(model, "model_config", None) is not None and getattr(model, "diffusion_model", None) is not None


@dataclass(frozen=True)
class UNetFamily:
    """An SD-style UNet: input blocks, one middle block, output blocks, each optionally holding a
    SpatialTransformer whose BasicTransformerBlocks carry self-attention (attn1) and cross-attention (attn2)."""
    id: str  # what tables record, e.g. "sdxl"
    name: str  # what users read, e.g. "SDXL"
    config_class: str  # the comfy.supported_models class that identifies it
    diffusers_layers_per_block: int = 2  # res/attention pairs per down level in diffusers' names
    kind: str = UNET
    table_families: tuple[str, ...] = ()  # other table family ids that fit this family's models
    seg_default: str = "middle"  # SEG's "auto" layers: the official code's whole mid block

    def accepts_table(self, table_family: str) -> bool:
        return table_family == self.id or table_family in self.table_families

    def recognises(self, model: Any) -> bool:
        if not has_model_parts(model):
            return False
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

    def table_timestep(self, model_sampling: Any, sigma: Any) -> Any:
        """The timestep a sensitivity table row is stored under: the model's own discrete timestep (0..999)."""
        return model_sampling.timestep(sigma)

    def diffusers_key(self, name: str) -> tuple:
        from ..tables.tables_math import diffusers_attn1_key

        return diffusers_attn1_key(name, self.diffusers_layers_per_block)


@dataclass(frozen=True)
class DiTFamily:
    """A diffusion transformer run on one joint [text, image] token sequence: SD3's MMDiT joint blocks
    (ComfyUI calls them "double_block") or Flux's double and single blocks. Each block is one layer (index 0):
    its joint attention, whose image tokens are the latent's patches in row-major order. Hooks are core's
    `patches_replace["dit"]` block replaces and the `optimized_attention_override` transformer option."""
    id: str
    name: str
    config_class: str
    model_class: str  # the diffusion_model class (module path, class name)
    stacks: tuple[tuple[str, str], ...]  # (block name, diffusion_model attribute) in forward order
    seg_default: str = ""  # SEG's "auto" layers (docs/seg.md says why); missing blocks fall back to the middle
    kind: str = DIT
    table_families: tuple[str, ...] = ()
    # ControlNet models whose residual layout is known (module path, class name), and that layout: which list
    # of the control dict is added to the image tokens after which block stack (comfy's DiT forward loops)
    controlnets: tuple[str, ...] = ()
    control_lists: tuple[tuple[str, str], ...] = ()

    def accepts_table(self, table_family: str) -> bool:
        return table_family == self.id or table_family in self.table_families

    def fits_controlnet(self, control_model: Any) -> bool:
        """Whether a ControlNet's control model is one of the types whose residuals this family adds."""
        return _is_any(control_model, self.controlnets)

    def recognises(self, model: Any) -> bool:
        if not has_model_parts(model):
            return False
        import importlib

        import comfy.supported_models as sm

        config_cls = getattr(sm, self.config_class, None)
        module, cls_name = self.model_class.rsplit(".", 1)
        try:
            model_cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError):
            return False
        return (config_cls is not None and isinstance(getattr(model, "model_config", None), config_cls)
                and isinstance(getattr(model, "diffusion_model", None), model_cls))

    def patch_size(self, dit: Any) -> int:
        size = getattr(dit, "patch_size", 2)
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def blocks(self, dit: Any) -> list[tuple[str, int, Any]]:
        return [(name, i, m) for name, attr in self.stacks for i, m in enumerate(getattr(dit, attr))]

    def container(self, dit: Any, block: str, block_id: int) -> Any:
        attr = dict(self.stacks)[block]
        return getattr(dit, attr)[block_id]

    def transformer(self, dit: Any, block: str, block_id: int) -> Any | None:
        return self.container(dit, block, block_id)

    def weight_prefix(self, dit: Any, key: tuple) -> str:
        """State-dict prefix "diffusion_model.<stack>.<id>." of a block."""
        return f"diffusion_model.{dict(self.stacks)[key[0]]}.{key[1]}."

    def blocks_from(self, dit: Any, first: tuple) -> list[Any]:
        seq = self.blocks(dit)
        start = next(i for i, (b, bid, _) in enumerate(seq) if (b, bid) == (first[0], first[1]))
        return [m for _, _, m in seq[start:]]

    def heads(self, dit: Any) -> tuple[int, int]:
        heads = int(dit.num_heads)
        return heads, int(dit.hidden_size) // heads

    def attention_layers(self, dit: Any) -> list[AttentionLayer]:
        """One layer per block, in forward order; the grid stride is the patch size."""
        heads, dim_head = self.heads(dit)
        stride = self.patch_size(dit)
        return [AttentionLayer(name, i, 0, order, stride, heads, dim_head, False)
                for order, (name, i, _) in enumerate(self.blocks(dit))]

    def text_tokens(self, dit: Any, context_len: int) -> int:
        """Text tokens at the front of each joint sequence: the encoded prompt plus any learned registers."""
        return int(context_len) + int(getattr(dit, "register_length", 0) or 0)

    def table_timestep(self, model_sampling: Any, sigma: Any) -> Any:
        """The timestep a sensitivity table row is stored under: sigma * 1000, the flow-matching timestep that
        SD3's sampling and diffusers' SD3 pipeline use and the shipped SD3.5 table records (Flux's own
        timestep is sigma itself, which would round every row to 0 or 1)."""
        import torch

        return torch.as_tensor(sigma) * 1000.0

    def diffusers_name(self, key: tuple) -> str:
        """The diffusers attention processor name of a block key, as the published tables list it: the
        inverse of diffusers_key ("transformer_blocks.7.attn.processor", "single_transformer_blocks.3...")."""
        stack = "single_transformer_blocks" if key[0] == "single_block" else "transformer_blocks"
        return f"{stack}.{key[1]}.attn.processor"

    def diffusers_key(self, name: str) -> tuple:
        """diffusers' "transformer_blocks.7.attn" (SD3) / "single_transformer_blocks.3.attn" (Flux) -> key."""
        import re

        m = re.match(r"^(single_)?transformer_blocks\.(\d+)\.", name)
        if m is None:
            raise ValueError(f"not a diffusers DiT block name: {name!r}")
        return ("single_block" if m.group(1) else "double_block", int(m.group(2)), 0)


def _is_any(obj: Any, class_paths: tuple[str, ...]) -> bool:
    import importlib

    for path in class_paths:
        module, name = path.rsplit(".", 1)
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(obj, cls):
            return True
    return False


# Checked in this order: a subclass's family comes before its base's.
FAMILIES: tuple[UNetFamily | DiTFamily, ...] = (
    UNetFamily("sdxl", "SDXL", "SDXL"),
    UNetFamily("sd2", "SD2.x", "SD20"),
    UNetFamily("sd15", "SD1.x", "SD15"),
    DiTFamily("sd3", "SD3/SD3.5", "SD3", "comfy.ldm.modules.diffusionmodules.mmdit.MMDiT",
              (("double_block", "joint_blocks"),), seg_default="d7-9", table_families=("sd35l", "sd35m"),
              controlnets=("comfy.cldm.mmdit.ControlNet", "comfy.cldm.dit_embedder.ControlNetEmbedder"),
              control_lists=(("output", "double_block"),)),
    DiTFamily("flux", "Flux", "Flux", "comfy.ldm.flux.model.Flux",
              (("double_block", "double_blocks"), ("single_block", "single_blocks")), seg_default="s0",
              controlnets=("comfy.ldm.flux.controlnet.ControlNetFlux",),
              control_lists=(("input", "double_block"), ("output", "single_block"))),
)
FAMILY_NAMES = {f.id: f.name for f in FAMILIES}
FAMILY_NAMES.update({"sd35l": "SD3.5 Large", "sd35m": "SD3.5 Medium"})  # table ids of SD3 models


Family = UNetFamily | DiTFamily


def family_by_id(family_id: str) -> Family | None:
    return next((f for f in FAMILIES if f.id == family_id), None)


def family_of(model_patcher: Any, node: str, kinds: tuple[str, ...] = (UNET,), missing: str = "") -> Family:
    """The family of a ModelPatcher (only `.model` is read); a ConduitError naming the node for anything
    unsupported, or of a kind (UNet, DiT) the node does not handle (`missing` then says what that kind lacks)."""
    return family_of_model(model_patcher.model, node, kinds, missing)


def _names(kinds: tuple[str, ...]) -> str:
    """The families a node takes, oldest first as users list them: "SD1.x, SD2.x, SDXL"."""
    names = [f.name for f in FAMILIES if f.kind == UNET and f.kind in kinds][::-1]
    return ", ".join(names + [f.name for f in FAMILIES if f.kind == DIT and f.kind in kinds])


def recognised_family(model: Any) -> Family | None:
    """The family of a comfy BaseModel, or None for a model no family describes (no error)."""
    return next((f for f in FAMILIES if f.recognises(model)), None)


def family_of_model(model: Any, node: str, kinds: tuple[str, ...] = (UNET,), missing: str = "") -> Family:
    """The same for a comfy BaseModel (what samplers and apply-model wrappers see)."""
    for family in FAMILIES:
        if family.recognises(model):
            if family.kind not in kinds:
                why = f" {missing}" if missing else ""
                raise ConduitError(node, f"{family.name} models are not supported by this node yet.{why}",
                                   f"use it with a model of a family it supports: {_names(kinds)}.")
            return family
    config = getattr(model, "model_config", None)
    name = type(config).__name__ if config is not None else type(model).__name__
    raise ConduitError(node, f"model family {name} is not supported.",
                       f"use a checkpoint of a supported family: {_names(kinds)}.")
