"""Stages `evaluate_*`: every metric of one model, with intervals, and its per-sample outcomes.

The model is a checkpoint folder (--model), or `teacher` / `teacher_cfg` of a --setting: the
routed source fields its students learn from, unguided or at guidance fields.cfg_scale (--base,
--experts).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import stages
from pipeline import config, tracking
from pipeline.core import compute
from pipeline.core.batches import Curated
from pipeline.data import outputs
from pipeline.eval import evaluation
from pipeline.eval.evaluator import Evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name")
    parser.add_argument("--model", type=Path, default=None, help="a checkpoint folder")
    parser.add_argument("--setting", default=None, help="teachers: a key of params settings")
    parser.add_argument("--base", type=Path, default=None, help="teachers: the base checkpoint")
    parser.add_argument("--experts", type=Path, default=None, help="teachers: the experts' folder")
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--embeddings", type=Path, required=True)
    parser.add_argument("--evaluator", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--outcomes", type=Path, required=True, help="per-sample outcomes (JSON)")
    parser.add_argument("--samples", type=Path, required=True, help="a labelled grid of outputs (PNG)")
    args = parser.parse_args()

    params = config.load()
    outputs.ensure_writable(args.metrics, args.outcomes, args.samples)
    device = compute.setup(params.compute)
    setting = params.settings[args.setting] if args.setting else None
    field, guidance, routes, space = evaluation.load_field(args.name, params.eval, params.fields, setting,
                                                           model=args.model, base=args.base, experts=args.experts,
                                                           device=device)
    ev = Evaluator.load(args.evaluator, device)
    recipe = {"model": str(args.model or f"{args.setting}/{args.name}"), "guidance": guidance}
    model_name = f"{args.setting}/{args.name}" if args.setting else args.name
    with tracking.run("evaluate", params, recipe=recipe, model=model_name) as run:
        result, outcomes, grid = evaluation.evaluate(field, ev, Curated.open(args.shards, args.embeddings, space),
                                                     params.eval, params.model.shift, guidance, device, routes)
        args.samples.parent.mkdir(parents=True, exist_ok=True)
        grid.save(args.samples)
        tracking.write_metrics(args.metrics, result)
        tracking.write_metrics(args.outcomes, outcomes)
        run.log_metrics(result)
        run.log_artifact(args.samples, "samples.png")
        run.log_artifact(args.metrics, "metrics.json")
    print(f"evaluate {model_name}: geneval {result['geneval']:.3f} gedit {result['gedit']:.3f} "
          f"fid {result['fid']:.1f} clip {result['clip_score']:.1f} ({result['sec_per_image'] * 1e3:.0f} ms/image)")


if __name__ == "__main__":
    stages.run(main)
