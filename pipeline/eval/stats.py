"""Uncertainty: bootstrap intervals of every score, KID, FID's real-vs-real floor, and when a
difference may be called a direction.

Conventions (this module owns them):

- Every interval is a 95% percentile bootstrap (`RESAMPLES` resamples, seeded) of the score's own
  estimator over per-sample outcomes, which evaluation keeps (`data/outcomes/<group>/<model>.json`)
  so that intervals can be recomputed. Category-mean scores (GenEval-style, GEdit-style) resample
  within each category, as the score weighs every category once.
- KID is the unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³ between the
  generated features and a large cached set of real ones (KID is unbiased at small sample sizes,
  FID is not). Its bootstrap resamples the generated set and drops the pairs of a sample with a
  copy of itself, which would bias the unbiased estimator.
- FID's floor is the FID of a random subset of the real set, at the generated set's size, against
  the rest of it: a model's FID means little until it is clearly above that floor.
- A direction between two scores is called only when their intervals do not overlap; otherwise
  it is a tie (`direction`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.eval import metrics

RESAMPLES = 1000
LEVEL = 0.95


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def category_mean_interval(ok: Sequence[bool], categories: Sequence[str], seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the unweighted mean over categories of each category's success rate."""
    ok, categories = np.asarray(ok, dtype=np.float64), np.asarray(categories)
    groups = [ok[categories == c] for c in dict.fromkeys(categories.tolist())]
    if not groups:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.stack([g[rng.integers(0, len(g), (RESAMPLES, len(g)))].mean(1) for g in groups])  # (C, B)
    return _percentiles(means.mean(0))


def paired_category_difference(ok_a: Sequence[float], ok_b: Sequence[float], categories: Sequence[str],
                               seed: int = 0) -> tuple[float, float, float]:
    """(difference, lo, hi): the category-mean score of a minus b's, two models scored on the same
    prompts and noise, with a bootstrap that resamples prompts within each category and takes both
    models' outcomes of each drawn prompt (so what the prompts share cancels)."""
    a, b, categories = np.asarray(ok_a, np.float64), np.asarray(ok_b, np.float64), np.asarray(categories)
    if a.shape != b.shape or a.shape != categories.shape:
        raise ValueError(f"paired_category_difference: outcomes {a.shape}, {b.shape} and categories "
                         f"{categories.shape} must pair up one to one")
    groups = [a[categories == c] - b[categories == c] for c in dict.fromkeys(categories.tolist())]
    rng = np.random.default_rng(seed)
    means = np.stack([g[rng.integers(0, len(g), (RESAMPLES, len(g)))].mean(1) for g in groups])  # (C, B)
    return (float(np.mean([g.mean() for g in groups])), *_percentiles(means.mean(0)))


def mean_interval(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of a plain mean (NaNs dropped)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    return _percentiles(v[rng.integers(0, len(v), (RESAMPLES, len(v)))].mean(1))


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid(generated, real) -> float:
    """Unbiased MMD² (cubic polynomial kernel) between two (N, F) feature sets."""
    x, y = (np.asarray(f, dtype=np.float64) for f in (generated, real))
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"kid: need two (N>=2, F) feature sets of one width, got {x.shape}, {y.shape}")
    kxx, kyy, kxy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    n, m = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def kid_interval(generated, real, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of `kid` over resamples of the generated set (the real set is the fixed reference)."""
    x, y = (np.asarray(f, dtype=np.float64) for f in (generated, real))
    kxx, kxy_rows = _kernel(x, x), _kernel(x, y).mean(1)  # (N, N), (N,)
    kyy = _kernel(y, y)
    real_term = (kyy.sum() - np.trace(kyy)) / (len(y) * (len(y) - 1))
    rng, n, diag = np.random.default_rng(seed), len(x), np.diag(kxx)
    values = []
    for _ in range(RESAMPLES):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)  # copies of each sample
        pairs = n * n - (counts ** 2).sum()  # ordered pairs of different samples
        within = (counts @ kxx @ counts - (counts ** 2 * diag).sum()) / pairs
        values.append(within + real_term - 2 * (counts @ kxy_rows) / n)
    return _percentiles(np.asarray(values))


def fid_interval(generated, real, seed: int = 0, resamples: int = 200) -> tuple[float, float]:
    """Bootstrap interval of `metrics.fid` over resamples of the generated set."""
    x = np.asarray(generated, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return _percentiles(np.asarray([metrics.fid(x[rng.integers(0, len(x), len(x))], real)
                                    for _ in range(resamples)]))


def fid_floor(real, size: int, seed: int = 0, repeats: int = 10) -> tuple[float, float, float]:
    """(mean, min, max) FID of `size` real features against the rest of the real set: what a perfect
    model scores at that sample size, against the same reference."""
    y = np.asarray(real, dtype=np.float64)
    if size >= len(y) - 1:
        raise ValueError(f"fid_floor: {len(y)} real features leave no reference beside a set of {size}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(repeats):
        order = rng.permutation(len(y))
        values.append(metrics.fid(y[order[:size]], y[order[size:]]))
    return float(np.mean(values)), float(np.min(values)), float(np.max(values))


def direction(a: tuple[float, float], b: tuple[float, float], higher_is_better: bool = True) -> str:
    """"a" or "b" (the better one) when the intervals (lo, hi) do not overlap, else "tie"."""
    if any(math.isnan(v) for v in (*a, *b)):
        return "tie"
    if a[0] > b[1]:
        return "a" if higher_is_better else "b"
    if b[0] > a[1]:
        return "b" if higher_is_better else "a"
    return "tie"
