"""Command line: prepare a test host, run workflows headless, and build the demo."""
from __future__ import annotations

import argparse
import logging
import sys

from .host import HostNotFound, find_host


def cmd_host(args: argparse.Namespace) -> int:
    try:
        host = find_host()
    except HostNotFound as exc:
        print(exc, file=sys.stderr)
        return 2
    print(host.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m conduit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("host", help="find or fetch the ComfyUI used for tests and local runs; print it")
    for module in command_modules():
        module.add_commands(sub)
    return p


def command_modules() -> list:
    """conduit/cli_*.py modules each add their subcommands (set_defaults(func=...))."""
    import importlib
    import pkgutil
    from pathlib import Path

    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("cli_"))
    return [importlib.import_module(f"{__package__}.{n}") for n in names]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "host":
        return cmd_host(args)
    return args.func(args)
