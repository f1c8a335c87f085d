"""pipeline.eval.stats: bootstrap intervals, KID, FID's floor, and calling a direction."""
import math

import numpy as np
import pytest

from pipeline.eval import metrics, stats


def test_category_mean_interval_covers_the_score_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    cats = ["a"] * 40 + ["b"] * 40
    ok = np.r_[rng.random(40) < 0.9, rng.random(40) < 0.3]
    score = np.mean([ok[:40].mean(), ok[40:].mean()])
    lo, hi = stats.category_mean_interval(ok, cats)
    assert lo < score < hi and 0.05 < hi - lo < 0.3
    lo4, hi4 = stats.category_mean_interval(np.tile(ok, 4), cats * 4)
    assert hi4 - lo4 < 0.6 * (hi - lo)  # ~1/sqrt(4) as wide
    assert stats.category_mean_interval([True] * 10, ["a"] * 10) == (1.0, 1.0)


def test_mean_interval_and_nans():
    lo, hi = stats.mean_interval(np.r_[np.arange(100.0), np.nan])
    assert lo < 49.5 < hi
    assert all(math.isnan(v) for v in stats.mean_interval([np.nan]))


def test_kid_is_zero_in_expectation_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(2000, 8))
    same = [stats.kid(rng.normal(size=(100, 8)), real) for _ in range(20)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(20)  # unbiased: no offset at n = 100
    shifted = stats.kid(rng.normal(size=(100, 8)) + 0.5, real)
    assert shifted > max(same)
    lo, hi = stats.kid_interval(rng.normal(size=(100, 8)) + 0.5, real)
    assert lo < shifted < hi or abs(shifted - (lo + hi) / 2) < hi - lo  # the interval sits around it
    assert lo > 0  # and clears zero: the shift is detected


def test_kid_matches_its_definition_on_a_tiny_case():
    x, y = np.array([[0.0], [1.0], [2.0]]), np.array([[1.0], [3.0]])
    k = lambda a, b: (a * b + 1) ** 3  # noqa: E731  (d = 1)
    xx = sum(k(a, b) for i, a in enumerate(x[:, 0]) for j, b in enumerate(x[:, 0]) if i != j) / 6
    yy = sum(k(a, b) for i, a in enumerate(y[:, 0]) for j, b in enumerate(y[:, 0]) if i != j) / 2
    xy = sum(k(a, b) for a in x[:, 0] for b in y[:, 0]) / 6
    assert stats.kid(x, y) == pytest.approx(xx + yy - 2 * xy)


def test_fid_floor_is_what_two_real_halves_score():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(1000, 4))
    mean, lo, hi = stats.fid_floor(real, 100)
    assert lo <= mean <= hi and mean > 0
    assert metrics.fid(rng.normal(size=(100, 4)) + 1.0, real) > 5 * hi  # a real difference clears it
    with pytest.raises(ValueError, match="no reference"):
        stats.fid_floor(real, 999)


def test_a_direction_is_called_only_when_intervals_separate():
    assert stats.direction((0.6, 0.7), (0.4, 0.5)) == "a"
    assert stats.direction((0.4, 0.5), (0.6, 0.7)) == "b"
    assert stats.direction((0.4, 0.62), (0.6, 0.7)) == "tie"
    assert stats.direction((10.0, 12.0), (20.0, 30.0), higher_is_better=False) == "a"  # FID: lower wins
    assert stats.direction((math.nan, math.nan), (0.1, 0.2)) == "tie"
