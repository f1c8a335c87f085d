"""The teachers' learning curve at GPU scale: the T2I base's GenEval-style score against training samples.

Trains the base with the default recipe of params.yaml (`train.base`, its t sampling and lr) at a
larger batch for increasing step counts, each from scratch, and scores each with the evaluator
(all `eval.count` test prompts per bucket, unguided and at guidance 3). This is the curve the
teachers issue asks for when the CPU budget cannot reach the targets: it says how much compute
a competent base needs. Runs stop when `--budget` seconds would be exceeded.

    python benchmarks/teacher_curve.py --shards data/shards --embeddings data/embeddings \
        --evaluator data/models/evaluator --steps 1000,2500,6000 --batch 256 --out benchmarks/results/curve
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import config  # noqa: E402
from pipeline.core import backbone, compute  # noqa: E402
from pipeline.core.batches import Curated  # noqa: E402
from pipeline.eval import evaluation  # noqa: E402
from pipeline.eval.evaluator import Evaluator  # noqa: E402
from pipeline.train import sft  # noqa: E402

KEEP = ("geneval", "geneval_ci", "geneval_by_category", "gedit", "gedit_ci", "kid", "kid_ci", "fid", "fid_floor",
        "clip_score", "realism", "sec_per_image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml")
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--embeddings", type=Path, required=True)
    parser.add_argument("--evaluator", type=Path, required=True)
    parser.add_argument("--steps", default="1000,2500,6000")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=None, help="default: train.base.lr")
    parser.add_argument("--t-sampling", default=None, help="default: train.base.t_sampling")
    parser.add_argument("--count", type=int, default=240, help="test prompts per bucket")
    parser.add_argument("--guidance", default="1,3")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds; no run starts that would exceed it")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the trained model (compute.compile)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/teacher_curve"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/curve"))
    args = parser.parse_args()
    start = time.perf_counter()
    params = config.load(args.params)
    cp = SimpleNamespace(device=args.device, threads=0, compile=args.compile)
    device = compute.setup(cp)
    data = Curated.open(args.shards, args.embeddings)
    ev = Evaluator.load(args.evaluator, device)
    eval_params = params.eval.model_copy(update={"count": args.count})
    base = params.train.base.model_copy(update={"lr": args.lr or params.train.base.lr,
                                                 "t_sampling": args.t_sampling or params.train.base.t_sampling})
    rows, rate = [], None  # rate: seconds per step, from the first run
    longest = max(map(int, args.steps.split(",")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for steps in map(int, args.steps.split(",")):
        left = args.budget - (time.perf_counter() - start)
        if rate is not None and steps * rate + 30 > left:
            rows.append({"steps": steps, "skipped": f"needs ~{steps * rate:.0f} s, {left:.0f} s left"})
            continue
        row = {"steps": steps, "batch": args.batch, "samples": steps * args.batch, "lr": base.lr,
               "t_sampling": base.t_sampling}
        try:
            train = params.train.model_copy(update={"batch_size": args.batch, "checkpoint_every": 10**9,
                                                    "base": base.model_copy(update={"steps": steps})})
            plan = sft.plan("base", train, params.experts)
            tic = time.perf_counter()
            result = sft.train_model(plan, train, params.model, cp, data=data, out=args.work / f"base-{steps}", init=None)
            row |= {"train_s": round(time.perf_counter() - tic, 1), "final_loss": round(result.history[-1]["loss"], 4)}
            rate = (time.perf_counter() - tic) / steps
            model = backbone.load(args.work / f"base-{steps}").to(device).eval()
            for g in map(float, args.guidance.split(",")):
                res, _, grid = evaluation.evaluate(model, ev, data, eval_params, params.model.shift, g, device)
                row[f"guidance_{g:g}"] = {k: res[k] for k in KEEP if k in res}
                if steps == longest:  # the grids of the best-trained model
                    grid.save(args.out.parent / f"base-{steps}-g{g:g}.png")
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        print(json.dumps(row), flush=True)
        rows.append(row)
        args.out.with_suffix(".json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "rows": rows}, indent=1) + "\n")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
