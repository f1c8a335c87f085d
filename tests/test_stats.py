"""pipeline.eval.stats: two-level and paired bootstrap intervals (closed forms, coverage, the seed
level), KID, FID's floor, and the verdict rule."""
import math

import numpy as np
import pytest

from pipeline.eval import metrics, stats


def _binomial_quantile(n: int, p: float, q: float) -> int:
    """The smallest k with P(Binomial(n, p) <= k) >= q."""
    total = 0.0
    for k in range(n + 1):
        total += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if total >= q:
            return k
    return n


def test_category_interval_covers_the_score_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    cats = ["a"] * 40 + ["b"] * 40
    ok = np.r_[rng.random(40) < 0.9, rng.random(40) < 0.3]
    score = np.mean([ok[:40].mean(), ok[40:].mean()])
    lo, hi = stats.interval(ok, cats)
    assert lo < score < hi and 0.05 < hi - lo < 0.3
    lo4, hi4 = stats.interval(np.tile(ok, 4), cats * 4)
    assert hi4 - lo4 < 0.6 * (hi - lo)  # ~1/sqrt(4) as wide
    assert stats.interval([True] * 10, ["a"] * 10) == (1.0, 1.0)


def test_plain_interval_drops_nans():
    lo, hi = stats.interval(np.r_[np.arange(100.0), np.nan])
    assert lo < 49.5 < hi
    assert all(math.isnan(v) for v in stats.interval([np.nan]))


def test_the_paired_difference_matches_its_closed_form():
    """Two models that agree on every prompt but 12 of 120 (a right, b wrong there): the difference
    is 0.1 exactly, and its paired bootstrap is Binomial(120, 0.1) / 120, whatever the shared
    prompts' outcomes; the models' own intervals overlap, the paired one clears 0."""
    rng = np.random.default_rng(1)
    b = (rng.random(120) < 0.5).astype(float)
    differ = rng.choice(120, 12, replace=False)
    b[differ] = 0.0
    a = b.copy()
    a[differ] = 1.0
    d, lo, hi = stats.paired_difference(a, b)
    assert d == pytest.approx(0.1)
    assert lo == pytest.approx(_binomial_quantile(120, 0.1, 0.025) / 120, abs=1 / 120)
    assert hi == pytest.approx(_binomial_quantile(120, 0.1, 0.975) / 120, abs=1 / 120)
    (a_lo, a_hi), (b_lo, b_hi) = stats.interval(a), stats.interval(b)
    assert a_lo < b_hi  # separate intervals would call a tie
    assert lo > 0 and stats.verdict(lo, hi) == "reproduced (1 seed)"
    assert stats.paired_difference(b, a)[1:] == pytest.approx((-hi, -lo), abs=1 / 120)
    assert stats.paired_difference(a, a) == (0.0, 0.0, 0.0)


def test_the_paired_difference_stratifies_by_category():
    """Differences confined to one of two categories: the category mean weighs it by 1/2."""
    cats = ["x"] * 60 + ["y"] * 60
    a, b = np.zeros(120), np.zeros(120)
    a[:30] = 1.0  # half of category x
    d, lo, hi = stats.paired_difference(a, b, cats)
    assert d == pytest.approx(0.25)
    assert lo == pytest.approx(_binomial_quantile(60, 0.5, 0.025) / 120, abs=1 / 120)
    assert hi == pytest.approx(_binomial_quantile(60, 0.5, 0.975) / 120, abs=1 / 120)


def test_the_two_level_interval_widens_with_the_seed_to_seed_spread():
    rng = np.random.default_rng(2)
    cats = [c for c in "abcdef" for _ in range(20)]
    base = rng.random(120)
    alike = np.stack([base < 0.5] * 3).astype(float)  # three seeds, identical outcomes
    spread = np.stack([base < p for p in (0.2, 0.5, 0.8)]).astype(float)  # same mean, seeds far apart
    other = (rng.random(120) < 0.5).astype(float)
    width = lambda m: np.subtract(*stats.paired_difference(m, other, cats)[2:0:-1])  # noqa: E731
    assert width(spread) > 2 * width(alike)
    one = stats.paired_difference(alike[0], other, cats)
    assert stats.paired_difference(alike, other, cats) == pytest.approx(one, abs=1e-9)  # S copies = 1 seed
    with pytest.raises(ValueError, match="pair up"):
        stats.paired_difference(alike, other[:100], cats)


def test_the_category_interval_covers_at_its_nominal_level():
    """A metric with a known sampling distribution: per-category Bernoulli rates, 120 prompts."""
    rng = np.random.default_rng(3)
    rates = np.array([0.1, 0.3, 0.5, 0.6, 0.8, 0.95])
    cats = np.repeat(np.arange(6), 20).astype(str)
    truth, reps, hits = rates.mean(), 300, 0
    for i in range(reps):
        ok = rng.random(120) < np.repeat(rates, 20)
        lo, hi = stats.interval(ok, cats, seed=i)
        hits += lo <= truth <= hi
    assert hits / reps >= 0.90


def test_the_kid_interval_covers_at_its_nominal_level_and_holds_its_point():
    """KID against a fixed reference: the estimand is the MMD² between the generated distribution
    and that reference (estimated without bias from 4,000 draws); 100 generated features a trial."""
    rng = np.random.default_rng(4)
    real = rng.normal(size=(400, 8))
    generated = lambda n: rng.normal(size=(n, 8)) * 1.2 + 0.3  # noqa: E731
    truth = np.mean([stats.kid(generated(4000), real) for _ in range(3)])
    hits, inside, reps = 0, 0, 120
    for i in range(reps):
        x = generated(100)
        lo, hi = stats.kid_interval(x, real, seed=i)
        hits += lo <= truth <= hi
        inside += lo <= stats.kid(x, real) <= hi
    assert hits / reps >= 0.90 and inside == reps


def test_verdicts_from_a_paired_interval():
    assert stats.verdict(0.01, 0.2, seeds=3) == "reproduced"
    assert stats.verdict(-0.2, -0.01, seeds=3) == "contradicted"
    assert stats.verdict(-0.1, 0.1, seeds=3) == stats.verdict(-0.1, 0.1) == "tie"
    assert stats.verdict(0.01, 0.2) == "reproduced (1 seed)"
    assert stats.verdict(math.nan, math.nan) == "tie"


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
    # The evaluation's one-pass form (the reference's kernel once) gives exactly both numbers.
    rng = np.random.default_rng(3)
    g, real = rng.normal(size=(40, 8)), rng.normal(size=(300, 8)) + 0.2
    assert stats.kid_with_interval(g, real, seed=5) == (stats.kid(g, real), stats.kid_interval(g, real, seed=5))


def test_fid_floor_is_what_two_real_halves_score():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(1000, 4))
    mean, lo, hi = stats.fid_floor(real, 100)
    assert lo <= mean <= hi and mean > 0
    assert metrics.fid(rng.normal(size=(100, 4)) + 1.0, real) > 5 * hi  # a real difference clears it
    with pytest.raises(ValueError, match="no reference"):
        stats.fid_floor(real, 999)
