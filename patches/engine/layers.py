"""Attention layers as ComfyUI (block, id, index) keys; the family seam (families.py) lists them per family."""
from __future__ import annotations

from dataclasses import dataclass



# ComfyUI's patches_replace["dit"] block names (SD3's joint blocks are "double")
DIT_BLOCKS = ("double_block", "single_block")


@dataclass(frozen=True)
class AttentionLayer:
    block: str  # "input" | "middle" | "output" (UNets) or "double_block" | "single_block" (DiTs)
    block_id: int
    index: int  # depth inside the block's SpatialTransformer (ComfyUI's block_index); 0 for a DiT block
    order: int  # global transformer order (ComfyUI's transformer_index)
    downsample: int  # token-grid stride relative to the latent (1, 2, 4, ...; a DiT's patch size)
    heads: int
    dim_head: int
    has_cross: bool  # a separate cross-attention (a DiT's joint attention mixes text in instead)

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.block, self.block_id, self.index)

    @property
    def short(self) -> str:
        """Compact name used in layer lists: i4.1, m0.3, o2.0 (UNets); d7, s0 (DiT double/joint, single)."""
        if self.block in DIT_BLOCKS:
            return f"{self.block[0]}{self.block_id}"
        return f"{self.block[0]}{self.block_id}.{self.index}"

    @property
    def is_dit(self) -> bool:
        return self.block in DIT_BLOCKS

    def grid(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = latent_hw
        for _ in range(self.downsample.bit_length() - 1):
            h, w = -(-h // 2), -(-w // 2)
        return h, w


def model_family(model_patcher, node: str, kinds: tuple[str, ...] = ("unet",), missing: str = "") -> str:
    """'sd15' | 'sd2' | 'sdxl' (UNets), 'sd3' | 'flux' (DiTs, where the node accepts `kinds` "dit"); a
    ConduitError naming the node (and, with `missing`, what a refused kind of model lacks) for anything else."""
    from .families import family_of

    return family_of(model_patcher, node, kinds, missing).id


def attention_layers(model_patcher, node: str = "Conduit", kinds: tuple[str, ...] = ("unet",)) -> list[AttentionLayer]:
    """Every attention layer of the model, in forward order, with its key and stride (from its family)."""
    from .families import family_of

    return family_of(model_patcher, node, kinds).attention_layers(model_patcher.model.diffusion_model)
