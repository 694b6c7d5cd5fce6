"""Selective One-Way Diffusion: attention modulation and the MLLM planner."""
