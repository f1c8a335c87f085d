"""Stages `train_base`, `train_expert` and `train_joint`: flow-matching SFT of the named model.

The model name (base, an expert from params `experts`, or joint) picks its buckets and budget.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import config, tracking, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="base | joint | an expert name")
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--init", type=Path, default=None, help="checkpoint to fine-tune from")
    args = parser.parse_args()

    cfg = config.load()
    stage = {"base": "train_base", "joint": "train_joint"}.get(args.name, f"train_expert@{args.name}")
    params = {"model": cfg.model, "train": cfg.train, "compute": cfg.compute}
    with tracking.run(stage, params, name=args.name) as run:
        _, history = train.train_sft(cfg, args.name, args.shards, args.out, args.init,
                                     on_log=lambda step, row: run.log_metrics(row, step))
        run.log_artifact(args.out / "samples.png")
    last = history[-1]
    print(f"train {args.name}: final loss {last['loss']:.4f}, {last['samples_per_s']:.0f} samples/s -> {args.out}")


if __name__ == "__main__":
    main()
