"""Stage `train_router`: the text -> task classifier, trained on a small labelled fraction."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import config, data, router, tracking, world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()

    cfg = config.load()
    with tracking.run("train_router", {"router": cfg.router}) as run:
        train = data.load_tensors(args.shards, list(world.TASKS), "train")
        model, metrics = router.train_router(train, cfg.router.label_fraction, cfg.router.steps, cfg.router.lr,
                                             cfg.router.seed)
        metrics["test_accuracy"] = model.accuracy(data.load_tensors(args.shards, list(world.TASKS), "test"))
        model.save(args.out)
        tracking.write_metrics(args.metrics, metrics)
        run.log_metrics(metrics)
    print(f"train_router: {metrics['labelled']} labels, test accuracy {metrics['test_accuracy']:.3f}")


if __name__ == "__main__":
    main()
