"""`make demo`: run every example workflow headless on the embedded demo model and write out/."""
from __future__ import annotations

import json
import logging
import re
from contextlib import ExitStack
from pathlib import Path

from . import demo_toy, toy_templates, workflow
from . import jobs as jobs_mod
from .cli_tables import render_heatmap
from .errors import UsageError
from .host import REPO_ROOT, find_host
from .jobs import Job, demo_graph, open_servers, run_jobs

log = logging.getLogger(__name__)

VANILLA = "__vanilla"  # job-name suffix of a workflow's side-by-side baseline


def toy_jobs(names: list[str]) -> list[Job]:
    """Every workflow made for the toy model (conduit/demo_toy.py) at demo_toy.SEEDS seeds from its own, each
    run followed by vanilla txt2img at the same seed."""
    vanilla = demo_graph(workflow.load_api("txt2img_vanilla"), "embedded")
    jobs = []
    for n in names:
        graph = demo_toy.adapt(n, demo_graph(workflow.load_api(n), "embedded"))
        first = demo_toy.first_seed(graph)
        seeds = [None] if first is None else [first + k for k in range(demo_toy.SEEDS)]
        for seed in seeds:
            g = graph if seed is None else demo_toy.with_seed(graph, seed)
            jobs.append(Job(n, g, seed))
            base = demo_toy.vanilla_graph(n, g, vanilla)
            if base is not None:
                jobs.append(Job(n + VANILLA, base, seed))
    return jobs


def _images(job: Job | None) -> list[Path]:
    """A run's pictures top to bottom: a vanilla twin it saves itself, the technique's image, then its masks,
    by name within each (the server lists independent SaveImage outputs in no fixed order)."""
    if job is None:
        return []
    return sorted((p for p in job.outputs if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")),
                  key=lambda p: ("vanilla" not in p.name, "mask" in p.name, p.name))


def _label(path: Path, job: Job) -> str:
    """An output's tile label: its SaveImage prefix without the run's name and ComfyUI's file counter."""
    return re.sub(r"_?\d+_?$", "", path.stem[len(job.stem) + 1:]).removeprefix("conduit_")[:22] or job.name


def picture(runs: list[Job], vanillas: list[Job], out: Path) -> Path | None:
    """The inputs, then a column per seed: vanilla on top, the technique's outputs below
    (out/compare_<workflow>.png)."""
    from PIL import Image

    inputs = []
    for nid in workflow.nodes_of(runs[0].graph, "LoadImage"):
        name = runs[0].graph[nid]["inputs"].get("image")
        if name in demo_toy.IMAGE_NAMES.values():
            inputs.append((f"input {name[4:-4]}", demo_toy.toy_image(name)))
    by_seed = {v.seed: v for v in vanillas}
    columns = []
    for job in runs:
        seed = f" seed {job.seed}" if job.seed is not None else ""
        column = [(f"vanilla{seed}", Image.open(p)) for p in _images(by_seed.get(job.seed))[:1]]
        column += [(_label(p, job) + seed, Image.open(p)) for p in _images(job)[:4]]
        if column:
            columns.append(column)
    if not columns and not inputs:
        return None
    path = out / f"compare_{runs[0].name}.png"
    demo_toy.compare_grid(inputs, columns).save(path)
    return path


def toy_summary(jobs: list[Job], out: Path, host: str) -> list[str]:
    """summary.md's per-workflow section: the picture, what to look for, host and size."""
    lines = ["", f"Host: {host}. Model: the demo toy model at its trained size, {jobs_mod.DEMO_SIZE}x"
                 f"{jobs_mod.DEMO_SIZE} ({jobs_mod.DEMO_STEPS} steps at most); prompts from its training captions. "
                 f"Each picture shows {demo_toy.SEEDS} consecutive seeds from the workflow's own, none picked.",
             ""]
    names = list(dict.fromkeys(j.name for j in jobs if not j.name.endswith(VANILLA)))
    for name in names:
        runs = [j for j in jobs if j.name == name]
        case = demo_toy.CASES.get(name)
        lines += [f"## {name}", ""]
        if case is not None and case.prompt:
            lines.append(f"Prompt: `{case.prompt}`.")
        if case is not None:
            lines.append(f"Look for: {case.look_for}")
        failed = [j for j in runs if j.error is not None]
        if failed:
            lines.append(f"FAILED ({failed[0].label}): {(str(failed[0].error).splitlines() or [''])[0]}")
        else:
            pic = picture(runs, [j for j in jobs if j.name == name + VANILLA], out)
            if pic is not None:
                lines += ["", f"![{name}]({pic.name})"]
        lines.append("")
    return lines


def _local_host() -> str:
    return find_host().describe()


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
    # A toy template is the toy form of a technique workflow, which the demo runs anyway (toy_templates.py)
    names = [n for n in workflow.short_names() if not toy_templates.is_toy_template(n)]
    with ExitStack() as stack:
        clients = open_servers(stack, servers or [], load_test_nodes=model.startswith("tiny-"))
        if model == "embedded" and workflow.DEMO_LOADER not in clients[0].object_info():
            raise UsageError(f"the demo model loader {workflow.DEMO_LOADER} is not registered on the server; "
                             "check the ComfyUI log for a failed import of nodes/demo_model.py")
        skipped: dict[str, str] = {}
        if model == "embedded":
            skipped = {n: "skipped: a DiT (SD3.5 / Flux) workflow; the demo toy model is SD1.5-shaped (run it with "
                          "`python -m conduit run <name> --model keep` on a server that has the model)"
                       for n in names if n not in demo_toy.CASES}
            jobs = toy_jobs([n for n in names if n in demo_toy.CASES])
        else:
            jobs = [Job(n, demo_graph(workflow.load_api(n), model)) for n in names]
        run_jobs(jobs, clients, out)
        host = servers[0] if servers else _local_host()
    heatmaps = render_tables(out)
    summary = [{"workflow": j.label, "ok": j.error is None, "seconds": round(j.seconds, 2),
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
    if model == "embedded":
        lines += toy_summary(jobs, out, host)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    ok = sum(1 for j in jobs if j.error is None)
    print(f"\n{ok} of {len(jobs)} workflows ran ({len(skipped)} skipped, see summary.md); images, heatmaps and "
          f"summary.md are in {out.resolve()}")
    return 0 if ok == len(jobs) else 1

