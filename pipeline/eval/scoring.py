"""The scores a model is given from its per-sample outcomes (`data/outcomes/`): the one rule that
evaluation (one model, one seed) and the report (a student's seeds) both apply.

A category score (GenEval-style, GEdit, and GEdit's local and global edits apart) is the mean over
the categories present of each category's success rate (`metrics.category_score`: each category
counts once whatever its size); a mean score (preservation, CLIP score, realism) is the plain mean,
a NaN sample (a global edit's preservation) left out. A student trained with S seeds has (S, N)
outcomes on the same N prompts and is scored by the seeds' mean; the interval is the two-level
bootstrap of `stats.interval` (seeds, then prompts within categories).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.data import world
from pipeline.eval import metrics, stats

# score -> (the outcomes it reads, the categories it averages over)
CATEGORY_SCORES = {"geneval": ("geneval", world.T2I_CATEGORIES), "gedit": ("gedit", world.EDIT_CATEGORIES),
                   "gedit_local": ("gedit", world.LOCAL_EDIT_CATEGORIES),
                   "gedit_global": ("gedit", world.GLOBAL_EDIT_CATEGORIES)}
MEAN_SCORES = ("preservation", "clip_score", "realism")
SCORES = (*CATEGORY_SCORES, *MEAN_SCORES)


def select(seeds: Sequence[dict], score: str) -> tuple[np.ndarray, list[str] | None]:
    """(outcomes (S, N), their categories or None) of one score, from S seeds' outcome files; a
    category score keeps only its own categories' prompts (GEdit local: the local edits)."""
    if score in MEAN_SCORES:
        return np.asarray([out[score] for out in seeds], dtype=np.float64), None
    key, known = CATEGORY_SCORES[score]
    cats = seeds[0][key]["category"]
    if any(out[key]["category"] != cats for out in seeds):
        raise ValueError(f"scoring: the seeds were scored on different {key} prompts")
    if unknown := sorted(set(cats) - set(CATEGORY_SCORES[key][1])):
        raise ValueError(f"scoring: unknown {key} categories {unknown}; expected some of {list(CATEGORY_SCORES[key][1])}")
    keep = np.isin(cats, known)
    values = np.asarray([out[key]["ok"] for out in seeds], dtype=np.float64)
    return values[:, keep], [c for c, k in zip(cats, keep) if k]


def score(seeds: Sequence[dict], name: str) -> dict:
    """{"value", "ci"}: one score's point (of the seeds' mean) and its two-level 95% interval."""
    values, cats = select(seeds, name)
    if values.shape[1] == 0 or not np.isfinite(values).any():
        return {"value": math.nan, "ci": [math.nan, math.nan]}
    mean = values.mean(0)
    point = float(np.nanmean(mean)) if cats is None else metrics.category_score(mean.tolist(), cats, CATEGORY_SCORES[name][1])[0]
    return {"value": point, "ci": list(stats.interval(values, cats))}


def by_category(seeds: Sequence[dict], name: str) -> dict[str, float]:
    """Each category's success rate (of the seeds' mean) of a category score."""
    values, cats = select(seeds, name)
    return metrics.category_score(values.mean(0).tolist(), cats, CATEGORY_SCORES[name][1])[1]
