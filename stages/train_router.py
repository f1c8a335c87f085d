"""Stage `train_router`: the text -> task classifier, trained on a small labelled fraction."""
from __future__ import annotations

import argparse
from pathlib import Path

import stages
from pipeline import config, tracking
from pipeline.core import compute
from pipeline.core.batches import Curated
from pipeline.train import router


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--embeddings", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()

    params = config.load()
    compute.setup(params.compute)  # one thread: the same bits on every rerun
    with tracking.run("train_router", params, model="router") as run:
        metrics = router.train_on(Curated.open(args.shards, args.embeddings), params.router, args.out)
        tracking.write_metrics(args.metrics, metrics)
        run.log_metrics(metrics)
    print(f"train_router: {metrics['labelled']} labels, test accuracy {metrics['test_accuracy']:.3f}")


if __name__ == "__main__":
    stages.run(main)
