"""Cyclic One-Way Diffusion: seeded canvas, inversion and the cyclic one-way sampler."""
