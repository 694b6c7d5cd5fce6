"""Let autograd run through the UNet blocks after a given layer although ComfyUI loaded them as inference tensors.

ComfyUI executes nodes under torch.inference_mode(), so the weights it loads (and every tensor made while
sampling) are inference tensors, which autograd refuses to save for backward even with grad re-enabled.
For the duration of one gradient pass the parameters of the tail blocks (the only ones the graph touches)
are swapped for ordinary copies; the originals go back afterwards, so the model is left as it was.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

@contextlib.contextmanager
def autograd_ready(modules: list[torch.nn.Module]) -> Iterator[set[int]]:
    """Swap inference-tensor or grad-requiring parameters for plain, frozen stand-ins.

    Must be entered outside inference mode (torch.inference_mode(False)), or the copies would be inference
    tensors again. While active, tensors autograd saves are copied (weights excepted), because ComfyUI's
    transformer blocks update their residual stream in place (x += attn(norm(x))) after a LayerNorm saved
    it, which autograd would otherwise reject once several layers lie on the graph.
    """
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
    weights: set[int] = set()

    def pack(t: torch.Tensor):
        return t if t.data_ptr() in weights else t.clone()

    try:
        for top in modules:
            for mod in top.modules():
                for name, p in list(mod._parameters.items()):
                    if p is None or not (p.is_inference() or p.requires_grad):
                        continue
                    data = p.detach().clone() if p.is_inference() else p.detach()
                    mod._parameters[name] = torch.nn.Parameter(data, requires_grad=False)
                    swapped.append((mod, name, p))
            weights.update(q.data_ptr() for q in top.parameters())
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield weights
    finally:
        for mod, name, p in reversed(swapped):
            mod._parameters[name] = p
