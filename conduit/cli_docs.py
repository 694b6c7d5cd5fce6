"""python -m conduit help-pages: write the editor's per-node help pages (web/docs/<NodeId>.md).
python -m conduit thumbnails: run each example workflow on the embedded demo toy model and save its first image
as the template browser's thumbnail (example_workflows/<name>.jpg)."""
from __future__ import annotations

import argparse
import tempfile
from contextlib import ExitStack
from pathlib import Path

from . import help_pages, workflow
from .demo import demo_graph, needs_missing_files
from .errors import UsageError
from .host import find_host, import_host
from .jobs import Job, open_servers, run_jobs
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


THUMB_SIDE = 256  # the demo model draws 64x64; the browser's cards are larger, so the image is enlarged


def cmd_thumbnails(args: argparse.Namespace) -> int:
    from PIL import Image

    names = args.workflows or workflow.short_names()
    skipped = {n: why for n in names if (why := needs_missing_files(workflow.load_api(n), "embedded"))}
    written = []
    jobs = []
    for name in (n for n in names if n not in skipped):
        try:
            jobs.append(Job(name, demo_graph(workflow.load_api(name), "embedded")))
        except UsageError as exc:  # SD3/Flux graphs refuse the SD1.5-shaped demo model
            skipped[name] = str(exc)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        clients = open_servers(stack, [])
        run_jobs(jobs, clients, Path(tmp))
        for job in jobs:
            pngs = [p for p in job.outputs if p.suffix == ".png"]
            if job.error or not pngs:
                skipped[job.name] = f"no image: {job.error or 'the run saved none'}"
                continue
            with Image.open(pngs[0]) as img:
                thumb = img.convert("RGB")
                if max(thumb.size) < THUMB_SIDE:
                    scale = THUMB_SIDE / max(thumb.size)
                    thumb = thumb.resize((round(thumb.width * scale), round(thumb.height * scale)), Image.NEAREST)
                path = workflow.EXAMPLES_DIR / f"{job.name}.jpg"
                thumb.save(path, quality=90)
                written.append(path)
    for path in written:
        print(f"wrote {path.relative_to(workflow.REPO_ROOT)}")
    for name, why in skipped.items():
        print(f"{name}: no thumbnail ({why})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    th = sub.add_parser("thumbnails", help="run the example workflows on the demo toy model and save each first "
                                           "image as example_workflows/<name>.jpg")
    th.add_argument("workflows", nargs="*", help="short names (default: all)")
    th.set_defaults(func=cmd_thumbnails)
    hp = sub.add_parser("help-pages", help="write web/docs/<NodeId>.md for every node, from the declarations "
                                           "and docs/ (a host test checks they are current)")
    hp.set_defaults(func=cmd_help_pages)
