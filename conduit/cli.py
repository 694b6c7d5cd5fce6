"""Command line: prepare a test host, run workflows headless, and build the demo."""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from pathlib import Path

from .client import ComfyError
from .errors import UsageError
from .host import HostNotFound, find_host
from .server import ServerFailed


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (what is wrong, and where the help is) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def cmd_host(args: argparse.Namespace) -> int:
    try:
        host = find_host()
    except HostNotFound as exc:
        print(exc, file=sys.stderr)
        return 2
    print(host.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m conduit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("host", help="find or fetch the ComfyUI used for tests and local runs; print it")
    for module in command_modules():
        module.add_commands(sub)
    return p


def command_modules() -> list:
    """conduit/cli_*.py modules each add their subcommands (set_defaults(func=...))."""
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("cli_"))
    return [importlib.import_module(f"{__package__}.{n}") for n in names]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "host":
        return cmd_host(args)
    try:
        return args.func(args)
    except UsageError as exc:  # the user's mistake: one line, what to type instead
        print(f"python -m conduit {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"python -m conduit {args.command}: cancelled", file=sys.stderr)
        return 130
    except (ComfyError, ServerFailed, OSError) as exc:  # a server said no, or went away: its whole message
        print(f"python -m conduit {args.command}: {exc}", file=sys.stderr)
        return 1
