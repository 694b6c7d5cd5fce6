"""Benchmarks: each technique against vanilla sampling, side by side in one process (python -m bench)."""
