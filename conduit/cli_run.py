"""`run`, `ui` and `demo` commands: drive ComfyUI headless over its HTTP API.

The job model (graphs, seeds, servers, running and cleaning up) is conduit/jobs.py; this module only reads
the command line, checks it (every mistake is one line on stderr and exit status 2), and reports.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

from . import overrides, workflow
from .demo import run_demo
from .errors import UsageError
from .jobs import MODELS, Job, check_server_has, open_servers, parse_seeds, prepare_graph, run_jobs


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, e.g. --timeout 600") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds, e.g. --timeout 600")
    return value


def plan_jobs(args: argparse.Namespace) -> tuple[str, dict, list[overrides.Assignment], list[int | None]]:
    """Everything that can be checked without a server: the workflow, --set syntax and node ids, --seeds."""
    path = workflow.resolve_workflow(args.workflow)
    base = workflow.load_api(path)
    name = workflow.workflow_name(path)
    sets = [overrides.parse_set(text, base) for text in args.set]
    overrides.check_nodes(sets, base, name)
    seeds = parse_seeds(args.seeds)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {args.out}: cannot create that folder ({exc.strerror or exc}); "
                         "give a folder you can write to") from None
    if seeds != [None] and not workflow.set_seeds(prepare_graph(base, args.model), 0):
        raise UsageError(f"--seeds {args.seeds}: {name} has no seed input to set; drop --seeds")
    return name, base, sets, seeds


def _sigterm_as_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace) -> int:
    name, base, sets, seeds = plan_jobs(args)
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C (even where a shell started us with SIGINT ignored) and `kill` both cancel and clean up
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    jobs: list[Job] = []
    try:
        with ExitStack() as stack:
            clients = open_servers(stack, args.server, args.model.startswith("tiny-"), timeout=args.timeout)
            graphs = []
            for client in clients:  # every server must have the nodes and accept every --set
                info = client.object_info()
                check_server_has(prepare_graph(base, args.model), info, client.base, args.model)
                graphs.append(prepare_graph(base, args.model, sets, info,
                                            server=client.base if len(clients) > 1 else ""))
            graph = graphs[0]
            for seed in seeds:
                g = json.loads(json.dumps(graph))
                if seed is not None:
                    workflow.set_seeds(g, seed)
                jobs.append(Job(name, g, seed))
            run_jobs(jobs, clients, Path(args.out))
    except KeyboardInterrupt:
        left = [j for j in jobs if j.cleanup and j.cleanup not in ("removed from the queue", "interrupted")]
        print(f"cancelled; {'nothing left on the servers' if not left else 'check the servers: '}"
              + "; ".join(f"{j.label}: {j.cleanup}" for j in left), file=sys.stderr)
        return 130
    for j in jobs:
        for p in j.outputs:
            print(p)
    failed = [j for j in jobs if j.error]
    if failed:
        print(f"{len(failed)} of {len(jobs)} runs failed", file=sys.stderr)
        return 1
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Complete an API workflow with default widget values and write its UI-format twin next to it."""
    paths = [workflow.resolve_workflow(name) for name in args.workflows]
    with ExitStack() as stack:
        (client,) = open_servers(stack, [args.server] if args.server else [])
        info = client.object_info()
    for path in paths:
        api = workflow.load_api(path)
        ui = workflow.ui_from_api(api, info)
        complete = workflow.api_from_ui(ui, info)
        for nid, node in api.items():  # keep titles
            if "_meta" in node:
                complete[nid]["_meta"] = node["_meta"]
        path.write_text(json.dumps(complete, indent=1) + "\n")
        ui_path = workflow.EXAMPLES_DIR / (workflow.workflow_name(path) + ".json")
        ui_path.write_text(json.dumps(ui, indent=1) + "\n")
        print(f"{path.name} -> {ui_path.name}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(Path(args.out), args.model, args.server)


def add_commands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run an API-format workflow headless and save its outputs",
                         description="Run an API-format workflow headless and save its outputs. Mistakes are "
                                     "reported in one line (exit status 2) before anything is queued; a failed, "
                                     "cancelled (Ctrl-C) or timed-out run takes its prompt off the server.")
    run.add_argument("workflow", help="a short name (seg_sdxl, or a unique prefix such as seg) or a path to an "
                                      "API-format workflow (with or without .api.json)")
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input before submitting, e.g. --set 6.cfg=4.0 (JSON values; repeatable); "
                          "checked against the server's node definitions")
    run.add_argument("--server", action="append", default=[], metavar="URL",
                     help="use these running ComfyUI servers (http://host:port, or just host:port; repeatable; "
                          "runs are spread across them). Default: start a local one.")
    run.add_argument("--seeds", help="run once per seed, e.g. 0-7 or 1,5,9 (sets every seed input)")
    run.add_argument("--model", default="embedded", choices=MODELS,
                     help="embedded (default: the pack's demo toy model, at its own 64x64 size and 12 steps "
                          "unless --set says otherwise), keep (the workflow's own loaders), "
                          "or tiny-sdxl / tiny-sd15 / tiny-flux / tiny-sd3 (random-weight test models; local "
                          "server only; SD3/Flux workflows need one of the last two, or keep)")
    run.add_argument("--timeout", type=_positive_seconds, default=600.0, metavar="SECONDS",
                     help="give up on a run after this long from submission, and take it off the server "
                          "(default 600)")
    run.add_argument("--out", default="out", help="folder for the outputs (default: out)")
    run.set_defaults(func=cmd_run)

    ui = sub.add_parser("ui", help="write the UI-format twin of API workflows (and fill in default inputs)")
    ui.add_argument("workflows", nargs="+")
    ui.add_argument("--server", help="a running ComfyUI to read /object_info from (default: start one)")
    ui.set_defaults(func=cmd_ui)

    demo = sub.add_parser("demo", help="run every example workflow on the embedded model; write out/")
    demo.add_argument("--out", default="out")
    demo.add_argument("--model", default="embedded", choices=MODELS)
    demo.add_argument("--server", action="append", default=[])
    demo.set_defaults(func=cmd_demo)
