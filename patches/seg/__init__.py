"""Smoothed Energy Guidance: blurred-query self-attention, its guidance term, and the prefix fork."""
