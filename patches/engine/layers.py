"""Attention layers as ComfyUI (block, id, index) keys; the family seam (families.py) lists them per family."""
from __future__ import annotations

from dataclasses import dataclass



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
    from .families import family_of

    return family_of(model_patcher, node).id


def attention_layers(model_patcher, node: str = "Conduit") -> list[AttentionLayer]:
    """Every attention layer of the model, in forward order, with its key and stride (from its family)."""
    from .families import family_of

    return family_of(model_patcher, node).attention_layers(model_patcher.model.diffusion_model)
