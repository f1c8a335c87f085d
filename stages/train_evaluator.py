"""Stage `train_evaluator`: train the scene parser and domain CLIP every metric is computed with.

Fails, writing nothing, when the parser reads held-out renders with < 99% scene accuracy.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import config, evaluator, tracking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()

    cfg = config.load()
    params = {"evaluator": cfg.eval.evaluator, "world": cfg.world, "compute": cfg.compute}
    with tracking.run("train_evaluator", params) as run:
        metrics = evaluator.train_evaluator(cfg, args.out)
        tracking.write_metrics(args.metrics, metrics)
        run.log_metrics(metrics)
    print(f"train_evaluator: scene accuracy {metrics['scene_accuracy']:.4f}, CLIP match "
          f"{metrics['clip_match']:.1f} vs shuffled {metrics['clip_shuffled']:.1f}, "
          f"{metrics['train_seconds']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
