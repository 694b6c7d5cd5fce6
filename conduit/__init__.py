"""Conduit tooling: test hosts, a headless ComfyUI server launcher, an HTTP client and the runner CLI.

This package is not part of the node pack that ComfyUI loads; it drives ComfyUI from outside.
"""
