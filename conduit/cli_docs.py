"""python -m conduit help-pages: write the editor's per-node help pages (web/docs/<NodeId>.md).
python -m conduit toy-templates: write the toy templates (conduit/toy_templates.py), API graphs and editor twins.
python -m conduit thumbnails: run each example workflow's toy form on the embedded demo toy model and save its
first image as the template browser's thumbnail (example_workflows/<name>.jpg)."""
from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import ExitStack
from pathlib import Path

from . import help_pages, toy_templates, workflow
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


def thumbnail_graph(name: str) -> dict:
    """What a template's thumbnail is a run of: a toy template as it is; a UNet workflow as its toy template;
    a DiT workflow (the toy model is SD1.5-shaped) as the toy template of the same technique."""
    if toy_templates.is_toy_template(name):
        return workflow.load_api(name)
    return toy_templates.toy_template(toy_templates.THUMBNAIL_SOURCES.get(name, name))


def cmd_thumbnails(args: argparse.Namespace) -> int:
    from PIL import Image

    names = args.workflows or workflow.short_names()
    jobs = [Job(name, thumbnail_graph(name)) for name in names]
    written, failed = [], {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        clients = open_servers(stack, [])
        run_jobs(jobs, clients, Path(tmp))
        for job in jobs:
            # the technique's own image, not a vanilla twin or a mask; by name, since the server lists the
            # outputs of independent SaveImage nodes in no fixed order
            pngs = sorted((p for p in job.outputs if p.suffix == ".png"),
                          key=lambda p: ("vanilla" in p.name, "mask" in p.name, p.name))
            if job.error or not pngs:
                failed[job.name] = f"no image: {job.error or 'the run saved none'}"
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
    for name, why in failed.items():
        print(f"{name}: no thumbnail ({why})")
    return 1 if failed else 0


def cmd_toy_templates(args: argparse.Namespace) -> int:
    templates = toy_templates.all_templates()
    with ExitStack() as stack:
        (client,) = open_servers(stack, [])
        info = client.object_info()
    for name, graph in templates.items():
        api_path = workflow.WORKFLOW_DIR / f"{name}{workflow.API_SUFFIX}"
        api_path.write_text(json.dumps(graph, indent=1) + "\n")
        ui_path = workflow.EXAMPLES_DIR / f"{name}.json"
        ui_path.write_text(json.dumps(workflow.ui_from_api(graph, info), indent=1) + "\n")
        print(f"wrote {api_path.relative_to(workflow.REPO_ROOT)} and {ui_path.relative_to(workflow.REPO_ROOT)}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    th = sub.add_parser("thumbnails", help="run the example workflows on the demo toy model and save each first "
                                           "image as example_workflows/<name>.jpg")
    th.add_argument("workflows", nargs="*", help="short names (default: all)")
    th.set_defaults(func=cmd_thumbnails)
    tt = sub.add_parser("toy-templates", help="write the toy templates (each technique on the demo toy model, as "
                                              "it opens) to workflows/api/ and example_workflows/")
    tt.set_defaults(func=cmd_toy_templates)
    hp = sub.add_parser("help-pages", help="write web/docs/<NodeId>.md for every node, from the declarations "
                                           "and docs/ (a host test checks they are current)")
    hp.set_defaults(func=cmd_help_pages)
