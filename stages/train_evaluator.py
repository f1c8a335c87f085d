"""Stage `train_evaluator`: train the scene parser and domain CLIP every metric is computed with.

Fails, writing nothing, when the parser reads held-out renders with < 99% scene accuracy.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import stages
from pipeline import config, tracking
from pipeline.train import evaluator_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="its accuracies")
    parser.add_argument("--cost", type=Path, required=True, help="its training time")
    args = parser.parse_args()

    params = config.load()
    with tracking.run("train_evaluator", params, model="evaluator") as run:
        metrics, seconds = evaluator_training.train_evaluator(params.eval.evaluator, params.world.resolution,
                                                              params.compute, args.out)
        tracking.write_metrics(args.metrics, metrics)
        tracking.write_metrics(args.cost, {"seconds": round(seconds, 1)})
        run.log_metrics(metrics | {"seconds": seconds})
    print(f"train_evaluator: scene accuracy {metrics['scene_accuracy']:.4f}, CLIP match "
          f"{metrics['clip_match']:.1f} vs shuffled {metrics['clip_shuffled']:.1f}, {seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    stages.run(main)
