"""Stage `train_evaluator`: train the scene parser and domain CLIP every metric is computed with.

Fails, writing nothing, when the parser reads held-out renders with < 99% scene accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pipeline import config, evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()

    cfg = config.load()
    metrics = evaluator.train_evaluator(cfg, args.out)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.metrics.with_name(args.metrics.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, args.metrics)  # never a half-written metrics file
    print(f"train_evaluator: scene accuracy {metrics['scene_accuracy']:.4f}, CLIP match "
          f"{metrics['clip_match']:.1f} vs shuffled {metrics['clip_shuffled']:.1f}, "
          f"{metrics['train_seconds']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
