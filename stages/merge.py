"""Stage `merge`: a setting's weight-merge baseline, the parameter-wise mean of its source models."""
from __future__ import annotations

import argparse
from pathlib import Path

import stages
from pipeline import config, tracking
from pipeline.core import backbone, checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("setting", help="a key of params settings: its routes' sources are averaged")
    parser.add_argument("--base", type=Path, required=True, help="the base checkpoint")
    parser.add_argument("--experts", type=Path, required=True, help="the folder of the expert checkpoints")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    params = config.load()
    sources = list(dict.fromkeys(params.settings[args.setting].routes.values()))
    models = [str(p) for p in checkpoint.source_folders(args.base, args.experts, sources).values()]
    with tracking.run("merge", params, recipe={"mean_of": models}, model=f"{args.setting}/merge") as run:
        log = {"name": "merge", "recipe": {"mean_of": models}, "history": []}
        checkpoint.space(models)  # one space (pixels, or one VAE's latents) for all, or an error naming them
        checkpoint.save_model(backbone.average(models), args.out, log, checkpoint.read_sampling(models[0]))
        run.log_artifact(args.out / checkpoint.LOG)
    print(f"merge: mean of {len(models)} models -> {args.out}")


if __name__ == "__main__":
    stages.run(main)
