"""Benchmarks: each technique against vanilla sampling, side by side in one process (python -m bench)."""

import conduit  # noqa: F401,E402  (registers the pack as conduit_pack for the imports in this package)
