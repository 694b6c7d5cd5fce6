"""`heatmap`, `analyze` and `combine-tables` commands: sensitivity tables from the command line.

    python -m conduit heatmap sensitivity_tables/sdxl_style_qk.json out.png
    python -m conduit analyze --groups styles.txt --checkpoint models/sd_xl_base_1.0.safetensors --out t.json
    python -m conduit analyze --groups styles.txt --seeds 10,20,30 --server http://a:8188 --server http://b:8188 \
        --model keep --out t.json       # one analysis per seed, spread over the servers, then combined
    python -m conduit combine-tables a.json b.json c.json --out combined.json
"""
from __future__ import annotations

import argparse
import json
import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib import parse

from . import workflow
from .host import REPO_ROOT, find_host, import_host
from .jobs import Job, open_servers, parse_seeds, prepare_graph, run_jobs
from .pack import import_pack
import conduit_pack.patches.tables.heatmap  # noqa: E402
import conduit_pack.patches.tables.tables_math  # noqa: E402

log = logging.getLogger(__name__)
WORKFLOW = "sensitivity_analysis"
NODE_CLASS = "ConduitSensitivityAnalysis"


def _tables_math():
    """patches/tables_math.py without ComfyUI (the pack's package import needs a host)."""
    return conduit_pack.patches.tables.tables_math


def _load(source: str | Path):
    tm = _tables_math()
    shipped = REPO_ROOT / "sensitivity_tables" / f"{source}.json"
    path = shipped if not Path(source).exists() and shipped.exists() else Path(source)
    return tm.load_table(path, "conduit CLI")


def render_heatmap(table_path: str | Path, out_png: str | Path, lambda_s: float = 0.43,
                   features: list[str] | None = None) -> Path:
    """Draw a table file (or a shipped table name) as a PNG heatmap; used by `make demo`."""
    table = _load(table_path)
    img = conduit_pack.patches.tables.heatmap.render(table, lambda_s, features)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


def cmd_heatmap(args: argparse.Namespace) -> int:
    features = [f.strip() for f in args.features.split(",")] if args.features else None
    out = render_heatmap(args.table, args.out, args.lambda_s, features)
    print(out)
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    tm = _tables_math()
    combined = tm.combine_tables([_load(p) for p in args.tables], "conduit CLI")
    tm.save_table(combined, args.out)
    print(args.out)
    print(tm.summary(combined, args.lambda_s))
    return 0


def _read_groups(text: str) -> str:
    path = Path(text)
    return path.read_text() if path.exists() else text.replace("\\n", "\n")


def analysis_graph(groups: str, seed: int, args: argparse.Namespace) -> dict:
    """The shipped analysis workflow with this experiment's inputs; usable by any headless runner."""
    graph = workflow.load_api(WORKFLOW)
    values = {"groups": groups, "seed": seed, "content": args.content, "negative": args.negative,
              "samples_per_group": args.samples, "steps": args.steps, "cfg": args.cfg,
              "width": args.width, "height": args.height, "dimension": args.dimension,
              "sampler_name": args.sampler, "scheduler": args.scheduler,
              "filename_prefix": f"sensitivity/seed{seed}"}
    workflow.set_all(graph, NODE_CLASS, **{k: v for k, v in values.items() if v is not None})
    return graph


def fetch_tables(client: Any, result: Any) -> list[dict]:
    """Download the table files an analysis run reported (ui 'tables') from that server."""
    out = []
    for node_out in result.outputs.values():
        for ref in node_out.get("tables", []):
            q = parse.urlencode({"filename": ref["filename"], "subfolder": ref.get("subfolder", ""),
                                 "type": ref.get("type", "output")})
            out.append(json.loads(client._get(f"/view?{q}")))
    return out


def analyse_on_servers(groups: str, seeds: list[int], args: argparse.Namespace) -> list:
    """One analysis per seed, spread round-robin over the servers (or a local one), tables fetched back."""
    tm = _tables_math()

    def collect(job: Job, client: Any, result: Any) -> None:
        (data,) = fetch_tables(client, result)
        job.result = tm.parse_table(data, "conduit CLI")
        log.info("seed %d done on %s", job.seed, client.base)

    # the analysis sizes and steps come from this command's own flags, so no demo-size override here
    jobs = [Job("analysis", prepare_graph(analysis_graph(groups, seed, args), args.model, demo_size=False), seed)
            for seed in seeds]
    with ExitStack() as stack:
        clients = open_servers(stack, args.server, args.model.startswith("tiny-"))
        run_jobs(jobs, clients, collect=collect, progress=False)
    errors = [f"seed {j.seed}: {j.error}" for j in jobs if j.error]
    if errors:
        raise SystemExit("analysis failed:\n" + "\n".join(errors))
    return [j.result for j in jobs]


def analyse_in_process(groups: str, seeds: list[int], args: argparse.Namespace) -> list:
    """Load the model in this process (a checkpoint, or a tiny test model) and analyse with a tqdm bar."""
    from tqdm import tqdm

    import_host(find_host())
    import_pack(run_init=False)
    import conduit_pack.patches.tables.analysis as an
    if args.checkpoint:
        import comfy.sd

        model, clip = comfy.sd.load_checkpoint_guess_config(args.checkpoint, output_vae=False,
                                                            output_clip=True)[:2]
    elif args.model.startswith("tiny-"):
        from conduit_pack.toyworld import build

        family = args.model[len("tiny-"):]
        model, clip = build.build_unet(family, 0), build.build_clip(family, 1)
    else:
        raise SystemExit("give --checkpoint PATH, --model tiny-sdxl|tiny-sd15|tiny-sd2, or --server URL")

    def encode(text: str):
        tokens = clip.tokenize(text)
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    settings = an.AnalysisSettings(steps=args.steps, cfg=args.cfg, sampler=args.sampler, scheduler=args.scheduler,
                                   latent_hw=(args.height // 8, args.width // 8), dimension=args.dimension,
                                   provenance={"content": args.content, "negative": args.negative})
    negative = encode(args.negative)
    item_sets = [an.prompt_items(encode, groups, args.content, negative, args.samples, s) for s in seeds]
    total = sum(len(items) * args.steps + args.steps for items in item_sets)
    tables = []
    with tqdm(total=total, desc="sensitivity analysis", unit="step") as bar:
        for seed, items in zip(seeds, item_sets):
            settings.provenance["seed"] = seed
            tables.append(an.analyse(model, items, settings, "conduit analyze", progress=bar.update))
    return tables


def cmd_analyze(args: argparse.Namespace) -> int:
    tm = _tables_math()
    groups = _read_groups(args.groups)
    seeds = [s if s is not None else 10 for s in parse_seeds(args.seeds)]
    if args.server or args.via_server:
        tables = analyse_on_servers(groups, seeds, args)
    else:
        tables = analyse_in_process(groups, seeds, args)
    table = tables[0] if len(tables) == 1 else tm.combine_tables(tables, "conduit analyze")
    tm.save_table(table, args.out)
    print(args.out)
    print(tm.summary(table))
    if args.heatmap:
        print(render_heatmap(args.out, args.heatmap))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    hm = sub.add_parser("heatmap", help="draw a sensitivity table (file or shipped name) as a PNG heatmap")
    hm.add_argument("table", help="a table JSON file, or a shipped name such as sdxl_style_qk")
    hm.add_argument("out", help="the PNG to write")
    hm.add_argument("--lambda-s", type=float, default=0.43, help="lambda_S cut to outline (default 0.43)")
    hm.add_argument("--features", help="comma-separated features to draw (default: all in the table)")
    hm.set_defaults(func=cmd_heatmap)

    comb = sub.add_parser("combine-tables", help="combine tables of several experiments (trimmed mean per cell)")
    comb.add_argument("tables", nargs="+")
    comb.add_argument("--out", required=True)
    comb.add_argument("--lambda-s", type=float, default=0.43)
    comb.set_defaults(func=cmd_combine)

    an = sub.add_parser("analyze", help="compute a sensitivity table for a model (in process or on servers)")
    an.add_argument("--groups", required=True,
                    help="a text file with one group per line (prompts in a group separated by '|'), or the text")
    an.add_argument("--out", required=True, help="the table JSON to write")
    an.add_argument("--checkpoint", help="in process: a checkpoint file to analyse")
    an.add_argument("--model", default="keep",
                    help="tiny-sdxl/tiny-sd15/tiny-sd2 (test models), keep (the workflow's loader, on servers), "
                         "or embedded (the demo model, on servers)")
    an.add_argument("--server", action="append", default=[], metavar="URL",
                    help="run on these ComfyUI servers (repeatable; one analysis per seed, spread across them)")
    an.add_argument("--via-server", action="store_true", help="start a local server instead of running in process")
    an.add_argument("--seeds", default="10", help="one analysis per seed (e.g. 10,20,30 or 0-4); several are "
                                                  "combined per cell by trimmed mean, as the reference did")
    an.add_argument("--content", default="A dark brown rabbit")
    an.add_argument("--negative", default="")
    an.add_argument("--samples", type=int, default=3, help="samples per prompt (default 3)")
    an.add_argument("--steps", type=int, default=20)
    an.add_argument("--cfg", type=float, default=5.0)
    an.add_argument("--sampler", default="euler")
    an.add_argument("--scheduler", default="normal")
    an.add_argument("--width", type=int, default=1024)
    an.add_argument("--height", type=int, default=1024)
    an.add_argument("--dimension", choices=["style", "structure"], default="style")
    an.add_argument("--heatmap", help="also write the heatmap PNG here")
    an.set_defaults(func=cmd_analyze)

