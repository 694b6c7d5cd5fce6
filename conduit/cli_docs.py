"""python -m conduit help-pages: write the editor's per-node help pages (web/docs/<NodeId>.md)."""
from __future__ import annotations

import argparse

from . import help_pages
from .host import find_host, import_host
from .pack import import_pack


def declared_nodes() -> list[type]:
    import_host(find_host())
    import_pack(run_init=False)
    import conduit_pack.nodes as nodes

    return nodes.declared_nodes()


def cmd_help_pages(args: argparse.Namespace) -> int:
    written = help_pages.write(declared_nodes())
    print(f"wrote {len(written)} help pages to {help_pages.HELP_DIR.relative_to(help_pages.REPO_ROOT)}/")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    hp = sub.add_parser("help-pages", help="write web/docs/<NodeId>.md for every node, from the declarations "
                                           "and docs/ (a host test checks they are current)")
    hp.set_defaults(func=cmd_help_pages)
