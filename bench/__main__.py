"""python -m bench [--topology tiny sdxl_full] [--only seg,...] [--quick]: write bench/results.{json,md}."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from conduit.host import find_host, import_host  # noqa: E402

log = logging.getLogger("bench")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--topology", nargs="+", default=["tiny", "sdxl_full"], choices=["tiny", "sdxl_full"])
    p.add_argument("--only", default="", help="comma-separated case modules (e.g. baseline,seg)")
    p.add_argument("--quick", action="store_true", help="one repeat, fewest steps (smoke run)")
    p.add_argument("--out", default=str(ROOT / "results.json"))
    p.add_argument("--append", action="store_true",
                   help="keep the rows already in --out, replacing those this run measures again")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    host = find_host()
    import_host(host)
    from .context import make_context

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    modules = [m.name for m in pkgutil.iter_modules([str(ROOT)]) if m.name.startswith("cases_")]
    modules = sorted(m for m in modules if not wanted or m[len("cases_"):] in wanted)
    rows, kept = [], []
    if args.append and Path(args.out).exists():
        from .harness import Row

        kept = [Row.from_dict(d) for d in json.loads(Path(args.out).read_text())]
    for topology in args.topology:
        ctx = make_context(device, host.describe(), topology, args.quick)
        for name in modules:
            mod = importlib.import_module(f"bench.{name}")
            log.info("%s on %s", name, topology)
            rows += mod.cases(ctx)
            # after every module, so a long run that is cut short keeps its rows
            write_rows(Path(args.out), merged(kept, rows))
    out = Path(args.out)
    rows = merged(kept, rows)
    write_rows(out, rows)
    table = markdown(rows)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0


def merged(kept: list, new: list) -> list:
    """The kept rows that this run did not measure again, then the new ones."""
    def key(r):
        return r.technique, r.case, r.extra.get("topology")

    fresh = {key(r) for r in new}
    return [r for r in kept if key(r) not in fresh] + new


def write_rows(out: Path, rows) -> None:
    out.write_text(json.dumps([r.as_dict() for r in rows], indent=1))


def markdown(rows) -> str:
    head = ("| technique | case | topology | latent | baseline s | patched s | ratio | target | ok | device | host |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        d = r.as_dict()
        ok = {True: "yes", False: "NO", None: ""}[d["meets_target"]]
        target = "" if r.target is None else f"<={r.target:g}"
        lines.append(f"| {r.technique} | {r.case} | {d['topology']} | {d['latent']} | {r.baseline_s:.4f} | "
                     f"{r.patched_s:.4f} | {r.ratio:.3f} | {target} | {ok} | {r.device} | {r.host} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
