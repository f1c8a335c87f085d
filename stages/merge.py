"""Stage `merge`: the weight-merge baseline, the parameter-wise mean of the source models."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import backbone, config, data, sample, tracking, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", type=Path, nargs="+", help="checkpoint folders to average")
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    cfg = config.load()
    with tracking.run("merge", {"models": [str(m) for m in args.models]}) as run:
        merged = backbone.average(args.models)
        grid = sample.preview(merged, args.shards, data.read_null(args.shards), cfg.eval, cfg.model.shift)
        train.save_model(merged, args.out, [], {"name": "merge", "models": [str(m) for m in args.models]}, grid)
        run.log_artifact(args.out / "samples.png")
    print(f"merge: mean of {len(args.models)} models -> {args.out}")


if __name__ == "__main__":
    main()
