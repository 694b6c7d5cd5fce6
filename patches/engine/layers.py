"""Address a UNet's attention layers as ComfyUI (block, id, index) keys, and name the model family."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConduitError

SUPPORTED_FAMILIES = ("sd15", "sd2", "sdxl")
FAMILY_NAMES = {"sd15": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}


@dataclass(frozen=True)
class AttentionLayer:
    block: str  # "input" | "middle" | "output"
    block_id: int
    index: int  # depth inside the block's SpatialTransformer (ComfyUI's block_index)
    order: int  # global transformer order (ComfyUI's transformer_index)
    downsample: int  # feature-map stride relative to the latent (1, 2, 4, ...)
    heads: int
    dim_head: int
    has_cross: bool

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.block, self.block_id, self.index)

    @property
    def short(self) -> str:
        """Compact name used in layer lists: i4.1, m0.3, o2.0."""
        return f"{self.block[0]}{self.block_id}.{self.index}"

    def grid(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = latent_hw
        for _ in range(self.downsample.bit_length() - 1):
            h, w = -(-h // 2), -(-w // 2)
        return h, w


def model_family(model_patcher, node: str) -> str:
    """'sd15' | 'sd2' | 'sdxl' for supported UNets; a ConduitError naming the node for anything else."""
    import comfy.supported_models as sm

    config = getattr(model_patcher.model, "model_config", None)
    family = None
    if isinstance(config, sm.SDXL):
        family = "sdxl"
    elif isinstance(config, sm.SD20):
        family = "sd2"
    elif isinstance(config, sm.SD15):
        family = "sd15"
    if family is None or not _is_unet(model_patcher):
        name = type(config).__name__ if config is not None else type(model_patcher.model).__name__
        raise ConduitError(
            node, f"model family {name} is not supported.",
            f"use an SD1.x, SD2.x or SDXL UNet checkpoint (supported: {', '.join(FAMILY_NAMES.values())}).")
    return family


def _is_unet(model_patcher) -> bool:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return isinstance(getattr(model_patcher.model, "diffusion_model", None), UNetModel)


def attention_layers(model_patcher, node: str = "Conduit") -> list[AttentionLayer]:
    """Every BasicTransformerBlock of the UNet, in forward order, with its key and stride."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

    model_family(model_patcher, node)
    unet = model_patcher.model.diffusion_model
    layers: list[AttentionLayer] = []
    stride = 1

    def visit(block_name: str, block_id: int, module) -> None:
        nonlocal stride
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

    for i, blk in enumerate(unet.input_blocks):
        visit("input", i, blk)
    visit("middle", 0, unet.middle_block)
    for i, blk in enumerate(unet.output_blocks):
        visit("output", i, blk)
    return layers
