"""Stages `train_base`, `train_expert` and `train_joint`: flow-matching SFT of the named model.

The model name (base, an expert from params `experts`, or joint) picks its buckets and budget.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import config, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="base | joint | an expert name")
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--init", type=Path, default=None, help="checkpoint to fine-tune from")
    args = parser.parse_args()

    cfg = config.load()
    _, history = train.train_sft(cfg, args.name, args.shards, args.out, args.init)
    last = history[-1]
    print(f"train {args.name}: final loss {last['loss']:.4f}, {last['samples_per_s']:.0f} samples/s -> {args.out}")


if __name__ == "__main__":
    main()
