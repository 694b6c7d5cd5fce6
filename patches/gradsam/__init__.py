"""Abs-Grad-SAM: cross-attention capture, the gradient pass, masks and the background-replacing sampler."""
