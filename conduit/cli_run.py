"""`run`, `ui` and `demo` commands: drive ComfyUI headless over its HTTP API."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from . import workflow
from .client import ComfyClient, ComfyError
from .host import find_host
from .inputs import IMAGES, png_bytes
from .server import TEST_NODES, ComfyServer

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    graph: dict
    seed: int | None = None
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


def parse_seeds(text: str | None) -> list[int | None]:
    """'0-7' or '1,5,9' -> seeds; None keeps the workflow's own seed."""
    if not text:
        return [None]
    seeds: list[int | None] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds += list(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    return seeds


def upload_inputs(client: ComfyClient) -> None:
    """Send the procedurally drawn example inputs through /upload/image (works on remote servers too)."""
    import uuid
    from urllib import request

    for name in IMAGES:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode() + png_bytes(name) + f"\r\n--{boundary}--\r\n".encode()
        req = request.Request(client.base + "/upload/image", data=body,
                              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with request.urlopen(req, timeout=60) as r:
            r.read()


def prepare_graph(graph: dict, model: str, sets: list[str]) -> dict:
    if model == "embedded":
        graph = workflow.use_demo_model(graph)
    elif model.startswith("tiny-"):
        graph = workflow.swap_loaders(graph, model[len("tiny-"):])
    for text in sets:
        node_id, name, value = workflow.parse_assignment(text)
        workflow.set_input(graph, node_id, name, value)
    return graph


def _progress(prefix: str):
    def show(data: dict) -> None:
        value, total = data.get("value", 0), data.get("max", 1) or 1
        filled = int(30 * value / total)
        sys.stderr.write(f"\r{prefix} [{'#' * filled}{'.' * (30 - filled)}] {value}/{total}")
        sys.stderr.flush()
    return show


def run_jobs(jobs: list[Job], clients: list[ComfyClient], out_dir: Path) -> None:
    """Spread jobs round-robin over the servers, one worker thread per server."""
    out_dir.mkdir(parents=True, exist_ok=True)
    queues = [jobs[i::len(clients)] for i in range(len(clients))]

    def work(client: ComfyClient, queue: list[Job]) -> None:
        for job in queue:
            t0 = time.monotonic()
            label = f"{job.name}" + (f" seed {job.seed}" if job.seed is not None else "")
            try:
                result = client.wait(client.submit(job.graph), _progress(f"{label} @ {client.base}"))
                stem = f"{job.name}" + (f"_s{job.seed}" if job.seed is not None else "")
                for filename, data in client.images(result):
                    path = out_dir / f"{stem}_{filename}"
                    path.write_bytes(data)
                    job.outputs.append(path)
                texts = [t for o in result.outputs.values() for t in o.get("text", [])]
                if texts:
                    path = out_dir / f"{stem}_text.txt"
                    path.write_text("\n\n".join(str(t) for t in texts))
                    job.outputs.append(path)
            except (ComfyError, OSError, TimeoutError) as exc:
                job.error = str(exc)
            job.seconds = time.monotonic() - t0
            sys.stderr.write(f"\r{label}: {'FAILED ' + job.error[:200] if job.error else 'ok'} "
                             f"({job.seconds:.1f}s)\n")

    threads = [threading.Thread(target=work, args=(c, q)) for c, q in zip(clients, queues) if q]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _servers(stack: ExitStack, urls: list[str], load_test_nodes: bool) -> list[ComfyClient]:
    if urls:
        clients = [ComfyClient(u) for u in urls]
        for c in clients:
            if not c.alive():
                raise SystemExit(f"ComfyUI at {c.base} does not answer; start it or drop that --server.")
            upload_inputs(c)
        return clients
    host = find_host()
    extra = [TEST_NODES] if load_test_nodes else []
    server = stack.enter_context(ComfyServer(host, extra_node_dirs=extra))
    log.info("started %s on %s", host.describe(), server.url)
    client = server.client()
    upload_inputs(client)
    return [client]


def cmd_run(args: argparse.Namespace) -> int:
    base = workflow.load_api(args.workflow)
    name = workflow.api_path(args.workflow).name.replace(".api.json", "").replace(".json", "")
    jobs = []
    for seed in parse_seeds(args.seeds):
        graph = prepare_graph(json.loads(json.dumps(base)), args.model, args.set)
        if seed is not None and not workflow.set_seeds(graph, seed):
            raise SystemExit(f"--seeds given but {name} has no seed input to set")
        jobs.append(Job(name, graph, seed))
    with ExitStack() as stack:
        clients = _servers(stack, args.server, args.model.startswith("tiny-"))
        run_jobs(jobs, clients, Path(args.out))
    failed = [j for j in jobs if j.error]
    for j in jobs:
        for p in j.outputs:
            print(p)
    if failed:
        print(f"{len(failed)} of {len(jobs)} runs failed", file=sys.stderr)
        return 1
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Complete an API workflow with default widget values and write its UI-format twin next to it."""
    with ExitStack() as stack:
        (client,) = _servers(stack, [args.server] if args.server else [], load_test_nodes=False)
        info = client.object_info()
    for name in args.workflows:
        path = workflow.api_path(name)
        api = json.loads(path.read_text())
        ui = workflow.ui_from_api(api, info)
        complete = workflow.api_from_ui(ui, info)
        for nid, node in api.items():  # keep titles
            if "_meta" in node:
                complete[nid]["_meta"] = node["_meta"]
        path.write_text(json.dumps(complete, indent=1) + "\n")
        ui_path = path.with_name(path.name.replace(".api.json", ".json"))
        ui_path.write_text(json.dumps(ui, indent=1) + "\n")
        print(f"{path.name} -> {ui_path.name}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), args.model, args.server)


def add_commands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run an API-format workflow headless and save its outputs")
    run.add_argument("workflow", help="a workflows/<name>.api.json path or just <name>")
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input before submitting (JSON values; repeatable)")
    run.add_argument("--server", action="append", default=[], metavar="URL",
                     help="use these running ComfyUI servers (repeatable; runs are spread across them). "
                          "Default: start a local one.")
    run.add_argument("--seeds", help="run once per seed, e.g. 0-7 or 1,5,9 (sets every seed input)")
    run.add_argument("--model", default="embedded",
                     help="embedded (default: the pack's demo toy model), keep (the workflow's own loaders), "
                          "or tiny-sdxl / tiny-sd15 (random-weight test models; local server only)")
    run.add_argument("--out", default="out", help="folder for the outputs (default: out)")
    run.set_defaults(func=cmd_run)

    ui = sub.add_parser("ui", help="write the UI-format twin of API workflows (and fill in default inputs)")
    ui.add_argument("workflows", nargs="+")
    ui.add_argument("--server", help="a running ComfyUI to read /object_info from (default: start one)")
    ui.set_defaults(func=cmd_ui)

    demo = sub.add_parser("demo", help="run every example workflow on the embedded model; write out/")
    demo.add_argument("--out", default="out")
    demo.add_argument("--model", default="embedded")
    demo.add_argument("--server", action="append", default=[])
    demo.set_defaults(func=cmd_demo)


