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
    from . import runner  # the run/demo commands live with the runner

    runner.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "host":
        return cmd_host(args)
    return args.func(args)
