"""Stages `train_base`, `train_expert` and `train_joint`: flow-matching SFT of the named model.

The model name (base, an expert from params `experts`, or joint) picks its buckets and budget.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import stages
from pipeline import config, tracking
from pipeline.core import checkpoint, compute
from pipeline.core.batches import Curated
from pipeline.train import sft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="base | joint | an expert name")
    parser.add_argument("--setting", default=None, help="joint: the setting whose buckets it trains on")
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--embeddings", type=Path, required=True)
    parser.add_argument("--init", type=Path, default=None, help="checkpoint to fine-tune from")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="the training's cost and final loss")
    args = parser.parse_args()

    params = config.load()
    compute.relaunch(params.compute)  # compute.nproc > 1: this stage again, under torchrun
    setting = params.settings[args.setting] if args.setting else None
    plan = sft.plan(args.name, params.train, params.experts, setting)
    data = Curated.open(args.shards, args.embeddings)
    recipe = {"plan": plan, "init": str(args.init) if args.init else "scratch"}
    name = f"{args.setting}/{args.name}" if args.setting else args.name
    with tracking.run("train", params, recipe=recipe, model=name, resume=checkpoint.work_dir(args.out)) as run:
        result = sft.train_model(plan, params.train, params.model, params.compute, data=data, out=args.out,
                                 init=args.init, stream=params.data.stream,
                                 on_log=lambda step, row: run.log_metrics(row, step))
        summary = result.summary()
        tracking.write_metrics(args.metrics, summary)
        run.log_metrics(summary)
        run.log_artifact(args.out / checkpoint.LOG)
    print(f"train {args.name}: {summary} -> {args.out}")


if __name__ == "__main__":
    stages.run(main)
