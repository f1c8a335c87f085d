"""The teachers' recipe study at equal wall time: one SFT model per variant, trained for the same
seconds on this machine, scored by the project's evaluator on the fixed test prompts.

A variant is a set of params overrides (the keys `dvc exp run -S` takes). For each, a short probe
measures seconds per optimizer step, the model is trained from scratch (or from `--init`) for as
many steps as fit `--seconds`, and scored at each `--guidance` (GenEval-style for the base, edit
success for an edit expert), with the 95% intervals of `pipeline.eval.stats`. Every row says the
`dvc exp run -S ...` that trains the same model in the pipeline (its steps included).

    python benchmarks/teacher_study.py --seconds 600 --variant xpred8 model.prediction=sample model.patch_size=8 \
        --out benchmarks/results/cpu/study/xpred8.json

Run at most two at a time on 2 cores (`compute.threads: 1` each), so that their seconds compare.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from ruamel.yaml import YAML

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import config  # noqa: E402
from pipeline.core import backbone, compute  # noqa: E402
from pipeline.core.batches import Curated  # noqa: E402
from pipeline.eval import evaluation, metrics, stats  # noqa: E402
from pipeline.eval.evaluator import Evaluator  # noqa: E402
from pipeline.train import sft  # noqa: E402
from pipeline.data import shards, world  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def overridden(path: Path, overrides: list[str]) -> config.Config:
    """params.yaml with `key=value` overrides (values read as YAML, as `dvc exp run -S` does)."""
    yaml = YAML(typ="safe", pure=True)
    raw = yaml.load(path.read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[last] = yaml.load(io.StringIO(value))
    return config.parse(raw, f"{path} with {overrides}")


def score(model, ev, data, params, buckets, guidance, device) -> dict:
    """The scores of `model` on the first eval.count test samples of `buckets` at `guidance`."""
    row = {}
    for bucket in buckets:
        test, images, _ = evaluation.sample_bucket(model, data, bucket, params.eval, params.model.shift,
                                                   guidance, device)
        samples = [shards.world_sample(r.meta) for r in test.records]
        if bucket in ("t2i", "realism"):  # realism: the same prompts, in the realism mode
            ok = metrics.geneval_outcomes(ev.parse(images), [s.spec for s in samples])
            known = world.T2I_CATEGORIES
            if bucket == "realism":
                row["realism"] = float(ev.realism(images).mean())
            else:
                feats = ev.features(images).cpu().numpy()
                row["kid"] = stats.kid(feats, ev.reference)
                row["clip_score"] = float(ev.clip_score(images, [r.prompt for r in test.records]).mean())
        else:
            ok = metrics.gedit_outcomes(ev.parse(images), [s.target for s in samples])
            known = tuple(c for c in world.EDIT_CATEGORIES if c in world.CATEGORIES[bucket])
            if bucket == "local_edit":
                sources = np.stack([r.source for r in test.records])
                edited = [world.edited_cells(s.source, s.target) for s in samples]
                psnr = metrics.preservation_scores(images, sources, edited, images.shape[1])
                row["preservation"] = float(np.nanmean(psnr))
        name = {"t2i": "geneval", "realism": "geneval_realism"}.get(bucket, bucket)
        row[name], row[f"{name}_by_category"] = metrics.category_score(ok, [s.category for s in samples], known)
        row[f"{name}_ci"] = list(stats.interval(ok, [s.category for s in samples]))
        row[f"{name}_outcomes"] = {"ok": [bool(v) for v in ok], "category": [s.category for s in samples]}
    return row


def train_variant(args, name: str, params, data, device) -> dict:
    """Train the variant from scratch (or from --init) for --seconds (or --steps): the row's training part."""
    train = params.train.model_copy(update={"checkpoint_every": 10**9})
    plan = sft.plan(args.model, train, params.experts)
    steps = args.steps
    if not steps:  # a probe of 30 steps gives the rate
        probe = sft.train_model(dataclasses.replace(plan, steps=30), train, params.model, params.compute, data=data,
                                out=args.work / f"{name}-probe", init=args.init)
        steps = max(1, int(args.seconds * 30 / probe.seconds))
    plan = dataclasses.replace(plan, steps=steps)
    if args.model == "base":
        train = train.model_copy(update={"base": train.base.model_copy(update={"steps": steps})})
    tic = time.perf_counter()
    result = sft.train_model(plan, train, params.model, params.compute, data=data, out=args.work / name,
                             init=args.init)
    seconds = time.perf_counter() - tic
    steps_key = "train.base.steps" if args.model == "base" else f"experts.{args.model}.steps"
    return {"name": name, "overrides": args.variant[1:], "model": args.model, "steps": steps,
            "train_s": round(seconds, 1), "final_loss": result.history[-1]["loss"],
            "dvc": "dvc exp run " + " ".join(f"-S {o}" for o in args.variant[1:] + [f"{steps_key}={steps}"])}


def table(files: list[Path], against: Path, score_key: str) -> str:
    """A markdown table of study rows: each score with its interval, and its paired difference from
    the `against` row (same prompts, same noise) with that difference's interval."""
    ref = json.loads(against.read_text())
    lines = ["| row | steps | train min | guidance | score [95% CI] | paired vs " + ref["name"] + " [95% CI] |",
             "| --- | --- | --- | --- | --- | --- |"]
    for f in files:
        row = json.loads(f.read_text())
        for g in sorted(k for k in row if k.startswith("g") and k[1:].replace(".", "").isdigit()):
            r, base = row[g], ref.get(g)
            if score_key not in r:
                continue
            lo, hi = r[f"{score_key}_ci"]
            paired = "–"
            if base is not None and row["name"] != ref["name"] and f"{score_key}_outcomes" in r and f"{score_key}_outcomes" in base:
                a, b = r[f"{score_key}_outcomes"], base[f"{score_key}_outcomes"]
                d, dlo, dhi = stats.paired_difference(a["ok"], b["ok"], a["category"])
                paired = f"{d:+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
            lines.append(f"| {row['name']} | {row['steps']} | {row['train_s'] / 60:.1f} | {g[1:]} | "
                         f"{r[score_key]:.3f} [{lo:.3f}, {hi:.3f}] | {paired} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs="+", help="NAME key=value ...")
    parser.add_argument("--model", default="base", help="base, or an expert name (needs --init)")
    parser.add_argument("--init", type=Path, default=None, help="the base folder an expert is fine-tuned from")
    parser.add_argument("--seconds", type=float, default=600.0, help="training wall time")
    parser.add_argument("--steps", type=int, default=0, help="train exactly this many steps instead")
    parser.add_argument("--rescore", action="store_true", help="score the model already trained (in --work), "
                                                                 "keeping the training fields of --out")
    parser.add_argument("--eval", nargs="*", default=[], help="key=value overrides for scoring only (eval.*)")
    parser.add_argument("--guidance", default="1,3")
    parser.add_argument("--count", type=int, default=120, help="test samples per bucket")
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="the folder holding shards/ and embeddings/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/teacher_study"))
    parser.add_argument("--out", type=Path, help="the row's JSON")
    parser.add_argument("--table", nargs="*", type=Path, help="print the markdown table of these rows instead")
    parser.add_argument("--against", type=Path, help="--table: the row every paired difference is taken from")
    parser.add_argument("--score", default="geneval", help="--table: geneval | local_edit | global_edit | ...")
    args = parser.parse_args()
    if args.table:
        print(table(args.table, args.against or args.table[0], args.score))
        return
    name, overrides = args.variant[0], args.variant[1:]
    params = overridden(ROOT / "params.yaml", overrides)
    device = compute.setup(params.compute)
    data = Curated.open(args.data / "shards", args.data / "embeddings")
    if args.rescore:
        row = {k: v for k, v in json.loads(args.out.read_text()).items() if not k.startswith("g")}
    else:
        row = train_variant(args, name, params, data, device)
    model = backbone.load(args.work / name).to(device).eval()
    row["params_M"] = round(backbone.param_count(model) / 1e6, 3)
    scoring = overridden(ROOT / "params.yaml", overrides + args.eval + [f"eval.count={args.count}"])
    if args.eval:
        row["eval"] = args.eval
    ev = Evaluator.load(ROOT / "data/models/evaluator", device)
    buckets = ["t2i"] if args.model == "base" else sorted(sft.plan(args.model, params.train, params.experts).buckets)
    for g in map(float, args.guidance.split(",")):
        row[f"g{g:g}"] = score(model, ev, data, scoring, buckets, g, device)
        print(name, g, {k: v for k, v in row[f"g{g:g}"].items() if not k.endswith(("category", "outcomes"))},
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
