"""`make demo`: run every example workflow headless on the embedded demo model and write out/."""
from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

from . import workflow
from .cli_tables import render_heatmap
from .errors import UsageError
from .host import REPO_ROOT
from .jobs import Job, native_size, open_servers, prepare_graph, run_jobs

log = logging.getLogger(__name__)


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


def needs_missing_files(graph: dict, model: str) -> str | None:
    """The demo model ships no ControlNet; such workflows run in the server tests on a test ControlNet."""
    if model != "embedded":
        return None
    if workflow.nodes_of(graph, "ControlNetLoader"):
        return ("skipped: needs a ControlNet checkpoint, which the demo toy model does not have (run it with "
                "`python -m conduit run <name> --model keep` on a server that has one)")
    for nid in workflow.nodes_of(graph, "ConduitBalancedStyle"):
        if "sensitivity_table" not in graph[nid]["inputs"]:
            return ("skipped: Conduit ships sensitivity tables for SDXL only, and the demo toy model is SD1.5-shaped; "
                    "compute its table with the sensitivity_analysis workflow and wire it in (`make eval` does)")
    return None


def render_tables(out: Path) -> list[Path]:
    """The shipped SDXL sensitivity tables as heatmaps."""
    paths = []
    for table in sorted((REPO_ROOT / "sensitivity_tables").glob("sdxl*.json")):
        png = out / f"heatmap_{table.stem}.png"
        render_heatmap(table, png)
        paths.append(png)
    return paths


def run_demo(out: Path, model: str = "embedded", servers: list[str] | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    names = workflow.short_names()
    with ExitStack() as stack:
        clients = open_servers(stack, servers or [], load_test_nodes=model.startswith("tiny-"))
        if model == "embedded" and workflow.DEMO_LOADER not in clients[0].object_info():
            raise UsageError(f"the demo model loader {workflow.DEMO_LOADER} is not registered on the server; "
                             "check the ComfyUI log for a failed import of nodes/demo_model.py")
        skipped = {n: why for n in names if (why := needs_missing_files(workflow.load_api(n), model))}
        jobs = [Job(n, demo_graph(workflow.load_api(n), model)) for n in names if n not in skipped]
        run_jobs(jobs, clients, out)
    heatmaps = render_tables(out)
    summary = [{"workflow": j.name, "ok": j.error is None, "seconds": round(j.seconds, 2),
                "outputs": [p.name for p in j.outputs], "error": j.error} for j in jobs]
    summary += [{"workflow": n, "ok": None, "outputs": [], "error": why} for n, why in skipped.items()]
    summary.append({"workflow": "sensitivity heatmaps", "ok": True, "outputs": [p.name for p in heatmaps]})
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = ["# Conduit demo", "", f"model: {model}", "", "| workflow | ok | seconds | outputs |", "|---|---|---|---|"]
    for s in summary:
        first = (str(s.get("error")).splitlines() or [""])[0]  # the whole error is in summary.json
        status = {True: "yes", None: str(s.get("error"))}.get(s["ok"], "NO: " + first)
        lines.append(f"| {s['workflow']} | {status} | "
                     f"{s.get('seconds', '')} | {', '.join(s['outputs'])} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    ok = sum(1 for j in jobs if j.error is None)
    print(f"\n{ok} of {len(jobs)} workflows ran ({len(skipped)} skipped, see summary.md); images, heatmaps and "
          f"summary.md are in {out.resolve()}")
    return 0 if ok == len(jobs) else 1

