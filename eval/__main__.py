"""Toy-world evaluation suite: `python -m eval [--quick] [--only quality,seg,cb,...]`.

Writes tables (JSON + Markdown), image grids and plots to eval/out/ (or $CONDUIT_EVAL_OUT).
`python -m eval train-classifier` retrains ToyNet (eval/weights/toynet.safetensors); `python -m eval docs-pictures`
copies the pictures the docs show from eval/out/ into docs/img/.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("eval")

# name -> module in eval/ exposing run(quick: bool) -> dict
SUITES = {"quality": "quality", "seg": "eval_seg", "cb": "eval_cb", "cb_t": "eval_cb:run_lambda_t",
          "gradsam": "eval_gradsam", "cow": "eval_cow", "kv_swap": "diagnose_kv", "texture": "diagnose_texture"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="run", choices=["run", "train-classifier", "docs-pictures"])
    p.add_argument("--quick", action="store_true", help="few seeds and captions (the CI size)")
    p.add_argument("--only", default="", help="comma-separated suites: " + ",".join(SUITES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights", default="", help="toy model file to evaluate instead of the shipped one")
    p.add_argument("--controlnet", default="", help="toy ControlNet file to use instead of the shipped one")
    p.add_argument("--classifier", default="", help="ToyNet file to read with (or to write, for train-classifier)")
    p.add_argument("--out", default="", help="output folder instead of eval/out (also CONDUIT_EVAL_OUT)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    if args.command == "docs-pictures":
        from . import docs_pictures, report

        for path in docs_pictures.copy_pictures(Path(args.out) if args.out else report.out_dir()):
            print(path.name)
        return 0
    from conduit.host import find_host, import_host

    import_host(find_host())
    from conduit.pack import import_pack

    import_pack(run_init=True)
    if args.weights:
        from conduit_pack.toyworld import demo_model as toy

        toy.WEIGHTS = str(Path(args.weights).resolve())
    if args.controlnet:
        from conduit_pack.toyworld import demo_model as toy

        toy.CONTROLNET_WEIGHTS = str(Path(args.controlnet).resolve())
    from . import classifier

    if args.classifier:
        classifier.WEIGHTS = str(Path(args.classifier).resolve())
    if args.command == "train-classifier":
        from .gen import load_toy

        roundtrip = load_toy().round_trip
        # the recipe of the committed weights: 1500 steps at lr 2e-3, then 1500 more at lr 1e-3 on new batches,
        # half of each batch from the toy VAE's round trips (the VAE of --weights, default the shipped model)
        print(json.dumps(classifier.train(steps=1500, roundtrip=roundtrip), indent=1))
        print(json.dumps(classifier.train(steps=1500, resume_from=classifier.WEIGHTS, max_lr=1e-3, first_batch=1500,
                                          roundtrip=roundtrip), indent=1))
        return 0
    from . import report

    if args.out:
        report.OUT = Path(args.out)
    names = [n for n in args.only.split(",") if n] or list(SUITES)
    results, failed = {}, []
    for name in names:
        t0 = time.time()
        module, _, function = SUITES[name].partition(":")
        try:
            mod = importlib.import_module(f".{module}", __package__)
        except ImportError as exc:
            log.warning("suite %s unavailable: %s", name, exc)
            results[name] = {"unavailable": str(exc)}
            continue
        try:
            results[name] = getattr(mod, function or "run")(quick=args.quick)
        except Exception as exc:  # noqa: BLE001  (one suite failing must not hide the others' results)
            log.exception("suite %s failed", name)
            results[name] = {"failed": repr(exc)}
            failed.append(name)
        log.info("suite %s done in %.1f s", name, time.time() - t0)

    name = "summary.json" if not args.only else f"summary_{'_'.join(names)}.json"
    (report.out_dir() / name).write_text(json.dumps(results, indent=1, default=float))
    print(json.dumps(results, indent=1, default=float))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
