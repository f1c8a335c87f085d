"""Paired differences between two evaluations of the same test prompts with the same noise.

`stages.evaluate` writes every per-sample outcome to ``data/outcomes/<group>/<name>.json``; two such
files (two models, or one model before and after a change of params) pair up sample for sample. For
each score both carry, this prints a minus b with its 95% interval from a bootstrap that resamples
prompts (within each category for the category-mean scores) and takes both outcomes of each drawn
prompt, so what the prompts share cancels:

    git show HEAD~1:data/outcomes/sources/base.json > /tmp/before.json    # or any saved copy
    python benchmarks/paired_outcomes.py data/outcomes/sources/base.json /tmp/before.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.eval import scoring, stats  # noqa: E402

def differences(a: dict, b: dict) -> dict[str, tuple[float, float, float, float, float]]:
    """score -> (a, b, a - b, lo, hi) for every score both outcome files carry."""
    rows = {}
    for name, (key, _) in scoring.CATEGORY_SCORES.items():
        if not (a.get(key) and b.get(key)):
            continue
        if a[key]["category"] != b[key]["category"]:
            raise ValueError(f"{key}: the two files score different prompts (their categories differ)")
        (oa, cats), (ob, _) = scoring.select([a], name), scoring.select([b], name)
        if not cats:
            continue
        d, lo, hi = stats.paired_difference(oa, ob, cats)
        rows[name] = (scoring.score([a], name)["value"], scoring.score([b], name)["value"], d, lo, hi)
    for key in scoring.MEAN_SCORES:
        if a.get(key) and b.get(key) and not np.all(np.isnan(np.asarray(a[key], np.float64))):
            x, y = (np.asarray(f[key], np.float64) for f in (a, b))
            keep = np.isfinite(x) & np.isfinite(y)  # a plain mean: one stratum
            d, lo, hi = stats.paired_difference(x[keep], y[keep])
            rows[key] = (float(np.nanmean(a[key])), float(np.nanmean(b[key])), d, lo, hi)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args()
    rows = differences(*(json.loads(p.read_text()) for p in (args.a, args.b)))
    print(f"| score | {args.a} | {args.b} | a − b [95% CI] |\n| --- | --- | --- | --- |")
    for name, (va, vb, d, lo, hi) in rows.items():
        print(f"| {name} | {va:.3f} | {vb:.3f} | {d:+.3f} [{lo:+.3f}, {hi:+.3f}] |")


if __name__ == "__main__":
    main()
