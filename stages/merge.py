"""Stage `merge`: the weight-merge baseline, the parameter-wise mean of the source models."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import config, tracking
from pipeline.core import backbone, checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", type=Path, nargs="+", help="checkpoint folders to average")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    params = config.load()
    models = [str(m) for m in args.models]
    with tracking.run("merge", params, recipe={"mean_of": models}, model="merge") as run:
        log = {"name": "merge", "recipe": {"mean_of": models}, "history": []}
        checkpoint.save_model(backbone.average(args.models), args.out, log, checkpoint.read_sampling(args.models[0]))
        run.log_artifact(args.out / checkpoint.LOG)
    print(f"merge: mean of {len(models)} models -> {args.out}")


if __name__ == "__main__":
    main()
