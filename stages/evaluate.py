"""Stages `evaluate`, `evaluate_student`, `evaluate_teacher`: every metric of one model.

The model is a checkpoint folder (--model), or `teacher` / `teacher_cfg`: the routed source fields
the students learn from, unguided or at guidance fields.cfg_scale (--models, the models' root).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from pipeline import config, evaluation, tracking, train
from pipeline.evaluator import Evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--evaluator", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--samples", type=Path, required=True)
    args = parser.parse_args()

    cfg = config.load()
    device = train.setup_compute(cfg.compute)
    field, guidance = evaluation.load_field(cfg, args.name, args.model, args.models, device)
    ev = Evaluator.load(args.evaluator, device)
    with tracking.run(f"evaluate@{args.name}", {"eval": cfg.eval, "model": str(args.model)}, name=args.name) as run:
        result, grid = evaluation.evaluate(field, ev, args.shards, cfg.eval, cfg.model.shift, guidance, device)
        args.samples.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(args.samples)
        tracking.write_metrics(args.metrics, result)
        run.log_metrics(result)
        run.log_artifact(args.samples)
    print(f"evaluate {args.name}: geneval {result['geneval']:.3f} gedit {result['gedit']:.3f} "
          f"fid {result['fid']:.1f} clip {result['clip_score']:.1f} ({result['sec_per_image'] * 1e3:.0f} ms/image)")


if __name__ == "__main__":
    main()
