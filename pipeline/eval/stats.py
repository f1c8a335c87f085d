"""Uncertainty: bootstrap intervals of every score, paired differences between models, KID,
FID's real-vs-real floor, and the verdict rule.

Conventions (this module owns them):

- Every interval is a 95% percentile bootstrap (`RESAMPLES` resamples, seeded) over the per-sample
  outcomes evaluation keeps (`data/outcomes/<group>/<model>.json`), so any interval can be
  recomputed. Category-mean scores (GenEval-style, GEdit-style) resample prompts within each
  category (stratum), as the score weighs every category once; plain means use one stratum.
- A model trained with several seeds is an (S, N) array: S seeds, each scored on the same N
  prompts. Its score is the mean over seeds; the bootstrap is **two-level**: seeds with
  replacement, then prompts within strata (`bootstrap_scores`), so the interval carries the
  seed-to-seed spread as well as the prompts'. Pooling seeds x prompts as independent samples
  would leave the first out.
- A claim compares two models scored on the same prompts with the same noise: its interval is
  the **paired** bootstrap of the difference (each resample draws one set of prompts for both
  models, so what the prompts share cancels; seeds are drawn per model), `paired_difference`.
  `verdict` calls a direction only when that interval excludes 0.
- KID is the unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³ between the
  generated features and a large cached set of real ones, disjoint from the evaluated targets.
  Its bootstrap resamples the generated set and drops the pairs of a sample with a copy of
  itself, which would bias the unbiased estimator. FID (a biased plug-in statistic) is shown
  without an interval, beside its floor: the FID of a random real subset of the generated set's
  size against the rest, what a perfect model scores. KID carries the inference.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.eval import metrics

RESAMPLES = 2000
LEVEL = 0.95


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def _seeds(outcomes) -> np.ndarray:
    """(S, N) float: one model's per-sample outcomes, one row per training seed."""
    a = np.asarray(outcomes, dtype=np.float64)
    return a[None] if a.ndim == 1 else a


def _weights(categories: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(N,) weights of the category mean over the kept samples: 1 / (C * n_c) each."""
    w = np.zeros(len(categories))
    names = [c for c in dict.fromkeys(categories[keep].tolist())]
    for c in names:
        members = keep & (categories == c)
        w[members] = 1.0 / (len(names) * members.sum())
    return w


def bootstrap_scores(models: Sequence, categories: Sequence[str] | None = None,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(points (M,), resampled (RESAMPLES, M)): each model's score and its two-level bootstrap.

    `models`: M arrays of per-sample outcomes, (N,) or (S_m, N) (seeds), all on the same N prompts;
    the score is the category mean (`categories`, else the plain mean) of the seeds' mean. Each
    resample draws S_m seeds with replacement per model, then one set of prompts within each
    category shared by every model (paired). A prompt whose outcome is NaN for any model (a
    global edit's preservation) is left out.
    """
    arrays = [_seeds(m) for m in models]
    n = arrays[0].shape[1]
    cats = np.asarray(["all"] * n if categories is None else list(categories))
    if any(a.shape[1] != n for a in arrays) or len(cats) != n:
        raise ValueError(f"bootstrap_scores: outcomes {[a.shape for a in arrays]} and {len(cats)} categories "
                         "must pair up one prompt to one")
    keep = ~np.any([np.isnan(a).any(0) for a in arrays], axis=0)  # (N,)
    if not keep.any():
        return np.full(len(arrays), math.nan), np.full((RESAMPLES, len(arrays)), math.nan)
    w = _weights(cats, keep)
    rng = np.random.default_rng(seed)
    prompts = np.empty((RESAMPLES, n), dtype=np.int64)  # each resample's prompt at every position
    for c in dict.fromkeys(cats[keep].tolist()):
        members = np.flatnonzero(keep & (cats == c))
        prompts[:, members] = members[rng.integers(0, len(members), (RESAMPLES, len(members)))]
    prompts[:, ~keep] = 0  # weight 0
    points, resampled = [], []
    for a in arrays:
        a = np.where(np.isnan(a), 0.0, a)
        points.append(a.mean(0) @ w)
        drawn = a[rng.integers(0, len(a), (RESAMPLES, len(a)))].mean(1)  # (B, N): the drawn seeds' mean
        resampled.append(np.take_along_axis(drawn, prompts, 1) @ w)
    return np.asarray(points), np.stack(resampled, 1)


def interval(outcomes, categories: Sequence[str] | None = None, seed: int = 0) -> tuple[float, float]:
    """Two-level bootstrap interval of one model's score ((N,) or (S, N) outcomes)."""
    _, resampled = bootstrap_scores([outcomes], categories, seed)
    return _percentiles(resampled[:, 0]) if np.isfinite(resampled).all() else (math.nan, math.nan)


def paired_difference(a, b, categories: Sequence[str] | None = None, seed: int = 0) -> tuple[float, float, float]:
    """(difference, lo, hi): score of a minus b's, both scored on the same prompts and noise, with
    the paired two-level bootstrap interval of the difference."""
    points, resampled = bootstrap_scores([a, b], categories, seed)
    if not np.isfinite(points).all():
        return math.nan, math.nan, math.nan
    return float(points[0] - points[1]), *_percentiles(resampled[:, 0] - resampled[:, 1])


def verdict(lo: float, hi: float, seeds: int = 1) -> str:
    """A claim "a is better than b" from the paired interval of a - b: *reproduced* when it lies above
    0, *contradicted* below, a *tie* when it holds 0. `seeds`: the fewest training seeds of a
    student in the claim; a verdict resting on one seed says so (the interval then holds no
    seed-to-seed spread)."""
    if math.isnan(lo) or math.isnan(hi):
        return "tie"
    called = "reproduced" if lo > 0 else "contradicted" if hi < 0 else "tie"
    return f"{called} (1 seed)" if seeds == 1 and called != "tie" else called


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _kid_kernels(generated, real) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k(x, x), k(y, y), k(x, y)) of two (N, F) feature sets, float64."""
    x, y = (np.asarray(f, dtype=np.float64) for f in (generated, real))
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"kid: need two (N>=2, F) feature sets of one width, got {x.shape}, {y.shape}")
    return _kernel(x, x), _kernel(y, y), _kernel(x, y)


def _within(k: np.ndarray) -> float:
    """The mean of a kernel matrix off its diagonal: an unbiased mean over pairs of different samples."""
    return (k.sum() - np.trace(k)) / (len(k) * (len(k) - 1))


def kid(generated, real) -> float:
    """Unbiased MMD² (cubic polynomial kernel) between two (N, F) feature sets."""
    kxx, kyy, kxy = _kid_kernels(generated, real)
    return float(_within(kxx) + _within(kyy) - 2 * kxy.mean())


def kid_interval(generated, real, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of `kid` over resamples of the generated set (the real set is the fixed reference)."""
    return kid_with_interval(generated, real, seed)[1]


def kid_with_interval(generated, real, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """`kid` and `kid_interval` from one computation of the three kernels (the reference's, (M, M),
    is the costly one): every resample reuses them."""
    kxx, kyy, kxy = _kid_kernels(generated, real)
    real_term, kxy_rows = _within(kyy), kxy.mean(1)  # the fixed reference's term, once; (N,)
    point = float(_within(kxx) + real_term - 2 * kxy.mean())
    rng, n, diag = np.random.default_rng(seed), len(kxx), np.diag(kxx)
    counts = np.stack([np.bincount(r, minlength=n) for r in rng.integers(0, n, (RESAMPLES, n))]).astype(np.float64)
    pairs = n * n - (counts ** 2).sum(1)  # (B,) ordered pairs of different samples, per resample
    within = (np.einsum("bi,ij,bj->b", counts, kxx, counts) - (counts ** 2) @ diag) / pairs
    return point, _percentiles(within + real_term - 2 * (counts @ kxy_rows) / n)


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
