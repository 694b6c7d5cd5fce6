"""Headless runner (filled in by the runner work): `run` and `demo` subcommands."""
from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    return None
