"""The metrics of DESIGN.md §7, as plain functions of parsed scenes, images or features.

Conventions (this module owns them):

- Per-category scores are accuracies in [0, 1]; a headline mean (`geneval`, `gedit`) is the
  unweighted mean over the categories present, so each category counts once whatever its size.
  With no samples the mean is NaN.
- `preservation` is the mean over local-edit samples of the PSNR (dB, peak 255) of the untouched
  cells against the source. Identical pixels have infinite PSNR, so each sample is capped at
  `PSNR_CAP` dB (the usual max-PSNR convention); a sample whose every cell was edited has no
  untouched pixel and is skipped.
- `fid` is the Fréchet distance |mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)
  between Gaussians fitted to two feature sets (unbiased covariances, float64). The matrix square
  roots come from symmetric eigendecompositions (eigenvalues clipped at 0), which keeps it exact
  for the PSD matrices involved without scipy.
- `realism_gap_closure` = (R_student - R_init) / (R_teacher - R_init): 0 = no better than the
  init, 1 = as real as the realism teacher; NaN when teacher and init are equally real.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.data import world

PSNR_CAP = 100.0  # dB; an exact copy of the untouched cells scores this


def category_score(ok: list[bool], categories: list[str], known: tuple) -> tuple[float, dict]:
    """(mean over categories, per-category accuracy) of per-sample outcomes."""
    if len(ok) != len(categories):
        raise ValueError(f"metrics: {len(ok)} results but {len(categories)} categories")
    if unknown := sorted(set(categories) - set(known)):
        raise ValueError(f"metrics: unknown categories {unknown}; expected some of {list(known)}")
    by = {c: float(np.mean([o for o, k in zip(ok, categories) if k == c]))
          for c in known if c in categories}
    return (float(np.mean(list(by.values()))) if by else math.nan), by


def geneval_outcomes(scenes: list[world.Scene], specs: list[dict]) -> list[bool]:
    """Per sample: does the parsed scene satisfy its prompt's spec."""
    if len(scenes) != len(specs):
        raise ValueError(f"geneval: {len(scenes)} scenes but {len(specs)} specs")
    return [world.check_spec(spec, scene) for scene, spec in zip(scenes, specs)]


def geneval(scenes: list[world.Scene], specs: list[dict], categories: list[str]) -> tuple[float, dict]:
    """GenEval-style score: per-category share of parsed scenes that satisfy their prompt's spec."""
    return category_score(geneval_outcomes(scenes, specs), categories, world.T2I_CATEGORIES)


def gedit_outcomes(outputs: list[world.Scene], targets: list[world.Scene]) -> list[bool]:
    """Per sample: is the parsed output the target scene (style too)."""
    if len(outputs) != len(targets):
        raise ValueError(f"gedit: {len(outputs)} outputs but {len(targets)} targets")
    return [out == target for out, target in zip(outputs, targets)]


def gedit(outputs: list[world.Scene], targets: list[world.Scene],
          categories: list[str]) -> tuple[float, dict]:
    """Edit success: per-category share of parsed outputs equal to the target scene (style too)."""
    return category_score(gedit_outcomes(outputs, targets), categories, world.EDIT_CATEGORIES)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB (peak 255) of two uint8 arrays of one shape, capped at `PSNR_CAP`."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0 ** 2 / mse))


def preservation_scores(outputs: np.ndarray, sources: np.ndarray, edited_cells: list[list[int]],
                        size: int) -> list[float]:
    """Per local edit: PSNR (dB) of the cells it must not touch, output vs source (uint8 NHWC); NaN
    for an edit that touched every cell."""
    if outputs.shape != sources.shape or len(outputs) != len(edited_cells):
        raise ValueError(f"preservation: outputs {outputs.shape}, sources {sources.shape} and "
                         f"{len(edited_cells)} edited-cell lists do not match")
    scores = []
    for out, src, edited in zip(outputs, sources, edited_cells):
        keep = np.zeros(out.shape[:2], bool)  # (H, W) pixels of the untouched cells
        for cell in set(range(4)) - set(edited):
            y0, y1, x0, x1 = world.cell_box(cell, size)
            keep[y0:y1, x0:x1] = True
        scores.append(psnr(out[keep], src[keep]) if keep.any() else math.nan)
    return scores


def preservation(outputs: np.ndarray, sources: np.ndarray, edited_cells: list[list[int]],
                 size: int) -> float:
    """Mean PSNR (dB) of the cells each local edit must not touch, output vs source (uint8 NHWC)."""
    scores = [s for s in preservation_scores(outputs, sources, edited_cells, size) if not math.isnan(s)]
    return float(np.mean(scores)) if scores else math.nan


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix by eigendecomposition."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two (N, F) feature sets."""
    a, b = (np.asarray(f, dtype=np.float64) for f in (feats_a, feats_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"fid: need two (N>=2, F) feature sets of one width, got {a.shape}, {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    root = _sqrt_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cov_b @ root), 0, None)).sum()
    value = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    return float(max(value, 0.0))  # rounding can leave -1e-12 for identical sets


def clip_score(evaluator, images, texts: list[str]) -> float:
    """Mean domain-CLIP score 100 * cos(image, text) over (image, text) pairs."""
    return float(evaluator.clip_score(images, texts).mean())


def realism(evaluator, images) -> float:
    """Mean realism reward: the evaluator's probability that an image is in the "real" style."""
    return float(evaluator.realism(images).mean())


def realism_gap_closure(r_student: float, r_init: float, r_teacher: float) -> float:
    """(R_student - R_init) / (R_teacher - R_init); NaN when the teacher is no more real than init."""
    gap = r_teacher - r_init
    return (r_student - r_init) / gap if abs(gap) > 1e-12 else math.nan
