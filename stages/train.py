"""Stages `train_base`, `train_expert` and `train_joint`: flow-matching SFT of the named model.

The model name (base, an expert from params `experts`, or joint) picks its buckets and budget.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import config, tracking
from pipeline.train import sft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="base | joint | an expert name")
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--init", type=Path, default=None, help="checkpoint to fine-tune from")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="the training's cost and final loss")
    args = parser.parse_args()

    params = config.load()
    plan = sft.plan(args.name, params.train, params.experts, params.fields)
    stage = {"base": "train_base", "joint": "train_joint"}.get(args.name, f"train_expert@{args.name}")
    with tracking.run(stage, {"plan": plan, "train": params.train, "model": params.model}, name=args.name) as run:
        result = sft.train_model(plan, params.train, params.model, params.compute, shards_dir=args.shards,
                                 out=args.out, init=args.init, on_log=lambda step, row: run.log_metrics(row, step))
        summary = result.summary()
        tracking.write_metrics(args.metrics, summary)
        run.log_metrics(summary)
    print(f"train {args.name}: {summary} -> {args.out}")


if __name__ == "__main__":
    main()
