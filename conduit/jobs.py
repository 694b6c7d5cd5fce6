"""The job model shared by the runner (`run`), the demo and the tables CLI (`analyze`).

A job is one graph to run once on some server. This module turns workflows into ready graphs (model
choice, the demo model's own size, seeds, checked `--set` overrides), attaches to or starts servers, runs
jobs spread over them, and makes sure a failed, cancelled or timed-out job leaves nothing on any server.
"""
from __future__ import annotations

import copy
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib import request

from . import overrides, workflow
from .client import Cancelled, ComfyClient, ComfyError, PromptRejected, RunResult, parse_server_url
from .errors import UsageError
from .host import HostNotFound, find_host
from .inputs import IMAGES, png_bytes
from .overrides import Assignment
from .server import TEST_NODES, ComfyServer
from .websocket import PromptTimeout

log = logging.getLogger(__name__)

MODELS = ("embedded", "keep", "tiny-sdxl", "tiny-sd15", "tiny-flux", "tiny-sd3")

# The demo toy model's own size: it is trained on 64x64 images (toyworld/demo_model.py IMAGE_SIZE, 8x8 latents),
# and a dozen steps are plenty for it. `--model embedded` and `make demo` both run at this size.
DEMO_SIZE = 64
DEMO_STEPS = 12
SIZE_INPUTS = {  # class -> (width input, height input)
    "EmptyLatentImage": ("width", "height"),
    "ConduitModelLayers": ("width", "height"),
    "ConduitSensitivityAnalysis": ("width", "height"),
    "ConduitCOWSeedCanvas": ("canvas_width", "canvas_height"),
    "ConduitMLLMPlan": ("canvas_width", "canvas_height"),
}
STEP_CLASSES = ("KSampler", "BasicScheduler", "ConduitSensitivityAnalysis")
PIXEL_BOXES = {"ConduitCOWSeedCanvas": (("box_x", "box_w"), ("box_y", "box_h"))}


TINY_DIT_MAX_SIDE = 512  # the tiny SD3's position table covers 32x32 patches (toyworld/dit_build.py)


def cap_dit_size(graph: dict) -> dict:
    """SD3/Flux latents of at most 512x512 for the tiny DiTs (in place; returns the graph)."""
    for node in graph.values():
        if node["class_type"] == "EmptySD3LatentImage":
            for key in ("width", "height"):
                value = node["inputs"].get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > TINY_DIT_MAX_SIDE:
                    node["inputs"][key] = TINY_DIT_MAX_SIDE
    return graph


def native_size(graph: dict) -> dict:
    """Set the graph to the demo model's size and a small step count (in place; returns the graph)."""
    for node in graph.values():
        cls, inputs = node["class_type"], node["inputs"]
        if cls in SIZE_INPUTS:
            for axis, key in enumerate(SIZE_INPUTS[cls]):
                old = inputs.get(key)
                if not isinstance(old, int) or isinstance(old, bool) or old <= 0:
                    continue
                inputs[key] = DEMO_SIZE
                if cls in PIXEL_BOXES and inputs.get("box_units", "pixels") == "pixels":
                    for box_key in PIXEL_BOXES[cls][axis]:
                        if isinstance(inputs.get(box_key), (int, float)):
                            inputs[box_key] = round(inputs[box_key] * DEMO_SIZE / old, 3)
            if cls == "EmptyLatentImage" and isinstance(inputs.get("batch_size"), int):
                inputs["batch_size"] = 1
        if cls in STEP_CLASSES and isinstance(inputs.get("steps"), int):
            inputs["steps"] = min(inputs["steps"], DEMO_STEPS)
    return graph


def demo_graph(graph: dict, model: str) -> dict:
    """The graph at the demo model's own size and step count (jobs.DEMO_SIZE, jobs.DEMO_STEPS), with the
    MLLM planner told to fall back to the user's prompt (no MLLM server here)."""
    g = native_size(prepare_graph(graph, model))
    for nid in workflow.nodes_of(g, "ConduitMLLMPlan"):
        inputs = g[nid]["inputs"]
        if not inputs.get("manual_prompt"):
            inputs["manual_prompt"] = inputs.get("prompt", "")
            inputs["on_failure"] = "use manual if given"
    return g


@dataclass
class Job:
    name: str
    graph: dict
    seed: int | None = None
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    cancelled: bool = False
    cleanup: str = ""  # what was done on the server after a failure ("removed from the queue", ...)
    result: Any = None  # what the collect callback kept

    @property
    def label(self) -> str:
        return self.name + (f" seed {self.seed}" if self.seed is not None else "")

    @property
    def stem(self) -> str:
        return self.name + (f"_s{self.seed}" if self.seed is not None else "")


def parse_seeds(text: str | None) -> list[int | None]:
    """'0-7' or '1,5,9' (or '0-3,7') -> seeds; None keeps the workflow's own seed."""
    if text is None or not text.strip():
        return [None]
    seeds: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        if part.isdigit():
            seeds.append(int(part))
        elif dash and lo.strip().isdigit() and hi.strip().isdigit():
            a, b = int(lo), int(hi)
            if a > b:
                raise UsageError(f"--seeds {text}: a range goes low-high, e.g. --seeds {b}-{a}")
            seeds += list(range(a, b + 1))
        elif ".." in part:
            fixed = text.strip().replace("..", "-")
            a, _, b = part.partition("..")
            listed = ""
            if a.strip().isdigit() and b.strip().isdigit() and 0 <= int(b) - int(a) < 8 and "," not in text:
                listed = f", or list them: --seeds {','.join(str(i) for i in range(int(a), int(b) + 1))}"
            raise UsageError(f"--seeds {text}: write a range with one dash: --seeds {fixed}{listed}")
        else:
            raise UsageError(f"--seeds {text}: seeds are whole numbers from 0 up, as a range (--seeds 0-7), "
                             "a list (--seeds 1,5,9) or both (--seeds 0-3,7)")
    return seeds


def upload_inputs(client: ComfyClient) -> None:
    """Send the procedurally drawn example inputs through /upload/image (works on remote servers too)."""
    for name in IMAGES:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode() + png_bytes(name) + f"\r\n--{boundary}--\r\n".encode()
        req = request.Request(client.base + "/upload/image", data=body,
                              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with request.urlopen(req, timeout=60) as r:
            r.read()


def prepare_graph(graph: dict, model: str, sets: list[Assignment] = (), object_info: dict | None = None,
                  demo_size: bool = True, server: str = "") -> dict:
    """A copy of the graph for this model choice, with the overrides applied last (they win over the demo
    size). With object_info the overrides are checked against the server's node classes first."""
    if model not in MODELS:
        raise UsageError(f"--model {model}: choose one of {', '.join(MODELS)}")
    g = copy.deepcopy(graph)
    dit = workflow.is_dit_graph(g)
    if model == "embedded" and dit:
        raise UsageError("this is an SD3/Flux workflow, and the embedded demo model is SD1.5-shaped: run it with "
                         "--model keep on a ComfyUI that has the workflow's model files, or with --model tiny-flux "
                         "/ tiny-sd3 on a server with the test loaders")
    if model == "embedded":
        g = workflow.use_demo_model(g)
        if demo_size:
            native_size(g)
    elif model in ("tiny-flux", "tiny-sd3"):
        if not dit:
            raise UsageError(f"--model {model} is for SD3/Flux workflows; this one is for UNets (use tiny-sdxl)")
        # tiny-sd3 is SD3.5 Large's 38 joint blocks at the narrowest width: the shipped SD3.5-L table fits it
        g = workflow.swap_dit_loaders(g, "flux" if model == "tiny-flux" else "sd35l_keys")
        cap_dit_size(g)
    elif model.startswith("tiny-"):
        g = workflow.swap_loaders(g, model[len("tiny-"):])
    if sets:
        values = overrides.validate(list(sets), g, object_info, server) if object_info is not None else \
            [a.value for a in sets]
        overrides.apply(list(sets), values, g)
    return g


def check_server_has(graph: dict, object_info: dict, server: str, model: str) -> None:
    """Node classes the graph needs that the server lacks, said before anything is queued."""
    missing = sorted({n["class_type"] for n in graph.values()} - set(object_info))
    if not missing:
        return
    if model == "embedded" and workflow.DEMO_LOADER in missing:
        raise UsageError(f"the server at {server} has no {workflow.DEMO_LOADER} (is Conduit installed there, and "
                         "did nodes/demo_model.py import? see its log); or add --model keep to use the "
                         "workflow's own loaders")
    if model.startswith("tiny-") and set(missing) & {*workflow.TEST_LOADERS.values(), workflow.DIT_TEST_LOADER}:
        raise UsageError(f"--model {model} needs the test-only loaders (tests/comfy_nodes), which the server at "
                         f"{server} does not have; drop --server to start a local one, or use --model embedded")
    raise UsageError(f"the server at {server} does not have the node class(es) {', '.join(missing)} that this "
                     "workflow uses; install those node packs there")


def open_servers(stack: ExitStack, urls: list[str], load_test_nodes: bool = False,
                 timeout: float = 600.0) -> list[ComfyClient]:
    """Clients for the given servers (checked to answer), or for a local ComfyUI started in `stack`.
    The example input images are uploaded to each."""
    if urls:
        clients = [ComfyClient(parse_server_url(u), timeout=timeout) for u in urls]
        for c in clients:
            why = c.probe()
            if why:
                raise UsageError(f"ComfyUI at {c.base} does not answer: it {why}; start ComfyUI there, check "
                                 "the host and port, or drop that --server")
    else:
        try:
            host = find_host()
        except HostNotFound as exc:
            raise UsageError(str(exc)) from None
        extra = [TEST_NODES] if load_test_nodes else []
        server = stack.enter_context(ComfyServer(host, extra_node_dirs=extra))
        log.info("started %s on %s", host.describe(), server.url)
        clients = [server.client(timeout=timeout)]
    for c in clients:
        upload_inputs(c)
    return clients


def save_outputs(out_dir: Path) -> Callable[[Job, ComfyClient, RunResult], None]:
    """The default collect step: every image (and text output) of the run into out_dir."""
    def collect(job: Job, client: ComfyClient, result: RunResult) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for filename, data in client.images(result):
            path = out_dir / f"{job.stem}_{filename}"
            path.write_bytes(data)
            job.outputs.append(path)
        texts = [t for o in result.outputs.values() for t in o.get("text", [])]
        if texts:
            path = out_dir / f"{job.stem}_text.txt"
            path.write_text("\n\n".join(str(t) for t in texts))
            job.outputs.append(path)
    return collect


def _progress(prefix: str, show: bool):
    def update(data: dict) -> None:
        if not show:
            return
        value, total = data.get("value", 0), data.get("max", 1) or 1
        filled = int(30 * value / total)
        sys.stderr.write(f"\r{prefix} [{'#' * filled}{'.' * (30 - filled)}] {value}/{total}")
        sys.stderr.flush()
    return update


def _report(job: Job, client: ComfyClient) -> None:
    if job.error is None:
        sys.stderr.write(f"\r{job.label}: ok ({job.seconds:.1f}s)\n")
        return
    state = "CANCELLED" if job.cancelled else "FAILED"
    cleanup = f" [our prompt on {client.base}: {job.cleanup}]" if job.cleanup else ""
    lines = job.error.splitlines() or [""]
    sys.stderr.write(f"\r{job.label}: {state} ({job.seconds:.1f}s) {lines[0]}{cleanup}\n")
    for line in lines[1:]:
        sys.stderr.write(f"    {line}\n")


def run_one(job: Job, client: ComfyClient, cancel: threading.Event,
            collect: Callable[[Job, ComfyClient, RunResult], None], progress: bool = True) -> None:
    """Submit, follow and collect one job. Whatever goes wrong after its prompt is queued (an error, the
    timeout, a cancel), the prompt is taken off the server again before this returns."""
    t0 = time.monotonic()
    prompt_id, finished = None, False
    try:
        job.cleanup = "unknown (stopped while submitting)"  # what stays if this thread never gets further
        prompt_id = client.submit(job.graph)
        job.cleanup = ""
        if cancel.is_set():
            raise Cancelled("cancelled")
        result = client.wait(prompt_id, _progress(f"{job.label} @ {client.base}", progress), cancel=cancel)
        finished = True
        collect(job, client, result)
        job.result = job.result if job.result is not None else result
    except Cancelled:
        job.cancelled, job.error = True, "cancelled"
    except PromptTimeout:
        job.error = f"timed out after {client.timeout:g}s (raise --timeout for longer runs)"
    except PromptRejected as exc:
        job.error = str(exc)  # submit() already took a partly queued graph off the server
    except (ComfyError, OSError, ValueError) as exc:
        job.error = str(exc) or type(exc).__name__
    except Exception as exc:  # noqa: BLE001  (a bug here must still clean up and count as a failure)
        log.exception("unexpected error in %s", job.label)
        job.error = f"internal error: {exc!r}"
    finally:
        if prompt_id is None:
            job.cleanup = ""  # submit() returned: nothing queued, or it already took a partial graph off
        elif not finished:
            job.cleanup = "unknown (stopped while cleaning up)"
            job.cleanup = client.cancel(prompt_id)
        job.seconds = time.monotonic() - t0
        _report(job, client)


def run_jobs(jobs: list[Job], clients: list[ComfyClient], out_dir: Path | None = None,
             collect: Callable[[Job, ComfyClient, RunResult], None] | None = None, progress: bool = True) -> None:
    """Spread jobs round-robin over the servers, one worker thread per server. Ctrl-C (KeyboardInterrupt)
    cancels every job, waits until each server is left clean, and is raised again."""
    if collect is None:
        if out_dir is None:
            raise ValueError("run_jobs needs out_dir or collect")
        collect = save_outputs(out_dir)
    cancel = threading.Event()
    queues = [jobs[i::len(clients)] for i in range(len(clients))]

    def work(client: ComfyClient, queue: list[Job], finished: threading.Event) -> None:
        try:
            for job in queue:
                if cancel.is_set():
                    job.cancelled, job.error = True, "cancelled before it started"
                    continue
                run_one(job, client, cancel, collect, progress)
        finally:
            finished.set()

    def wait_for(flags: list[threading.Event], seconds: float) -> None:
        # time.sleep, not Thread.join: a KeyboardInterrupt inside join() can leave a live thread marked
        # stopped (CPython 3.11), and then nobody would wait for its clean-up
        deadline = time.monotonic() + seconds
        while not all(f.is_set() for f in flags) and time.monotonic() < deadline:
            time.sleep(0.1)

    work_items = [(c, q, threading.Event()) for c, q in zip(clients, queues) if q]
    flags = [f for _, _, f in work_items]
    try:
        for c, q, f in work_items:
            threading.Thread(target=work, args=(c, q, f), daemon=True).start()
        wait_for(flags, float("inf"))
    except KeyboardInterrupt:
        cancel.set()
        sys.stderr.write("\ncancelling: taking this run's prompts off the servers (Ctrl-C again to stop waiting)\n")
        try:
            wait_for(flags, 120.0)
        except KeyboardInterrupt:
            sys.stderr.write("not waiting for the clean-up; prompts may be left on the servers\n")
        for c, q, f in work_items:
            if not f.is_set():
                for job in q:
                    if job.error is None and not job.cleanup:
                        job.cleanup = f"unknown (the clean-up on {c.base} did not finish)"
        for job in jobs:
            if job.error is None and not job.outputs and job.result is None:
                job.cancelled, job.error = True, "cancelled"
        raise
