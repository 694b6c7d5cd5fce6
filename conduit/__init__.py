"""Conduit tooling: test hosts, a headless ComfyUI server launcher, an HTTP client and the runner CLI.

This package is not part of the node pack that ComfyUI loads; it drives ComfyUI from outside. Importing it
registers the pack as `conduit_pack` (see pack.py).
"""
from . import pack  # noqa: F401  (registers conduit_pack)
