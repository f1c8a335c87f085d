"""Stages `distill_<setting>`: one student of a setting, for the method and seed named in argv."""
from __future__ import annotations

import argparse
from pathlib import Path

import stages
from pipeline import config, tracking
from pipeline.core import checkpoint, compute
from pipeline.core.batches import Curated
from pipeline.train import distill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("setting", help="a key of params settings")
    parser.add_argument("method", help="one of the setting's methods (params distill.methods)")
    parser.add_argument("--seed", type=int, required=True, help="one of the setting's seeds")
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--embeddings", type=Path, required=True)
    parser.add_argument("--base", type=Path, required=True, help="the base checkpoint")
    parser.add_argument("--experts", type=Path, required=True, help="the folder of the expert checkpoints")
    parser.add_argument("--router", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="the training's cost and final loss")
    parser.add_argument("--evaluator", type=Path, help="scores the validation samples (train.sample_every); "
                        "read only then, and it changes no output: not a DVC dep")
    args = parser.parse_args()

    params = config.load()
    compute.relaunch(params.compute)  # compute.nproc > 1: this stage again, under torchrun
    # Only the setting's routes and init are read (what dvc.yaml declares): adding a seed or a method
    # to the setting leaves its existing students cached.
    setting, method = params.settings[args.setting], params.method(args.setting, args.method)
    data = Curated.open(args.shards, args.embeddings)
    name = f"{args.setting}/{args.method}-s{args.seed}"
    recipe = {"setting": setting, "method": method, "seed": args.seed}
    with tracking.run("distill", params, recipe=recipe, model=name, resume=checkpoint.work_dir(args.out)) as run:
        result = distill.train_student(
            method, setting, params.fields, params.routing, params.train, params.model.shift, params.compute,
            data=data, base=args.base, experts=args.experts, router_dir=args.router, out=args.out, name=name,
            seed=args.seed, lora_rank=params.model.lora_rank, stream=params.data.stream,
            on_log=lambda step, row: run.log_metrics(row, step), evaluator=args.evaluator, tracker=run)
        summary = result.summary()
        tracking.write_metrics(args.metrics, summary)
        run.log_metrics(summary)
        run.log_artifact(args.out / checkpoint.LOG)
    print(f"distill {name}: {summary} -> {args.out}")


if __name__ == "__main__":
    stages.run(main)
