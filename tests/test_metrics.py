"""Metrics: closed forms (FID), perfect and broken inputs that a broken metric would misscore."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.eval import metrics
from pipeline.data import world


def _t2i(n=60):
    return world.make_bucket("t2i", "test", n)


def _edits(bucket, n=48):
    return world.make_bucket(bucket, "test", n)


# ----------------------------------------------------------------------------- geneval / gedit

def test_geneval_of_the_true_scenes_is_one_in_every_category():
    samples = _t2i() + world.make_bucket("realism", "test", 12)
    mean, by = metrics.geneval([s.target for s in samples], [s.spec for s in samples],
                               [s.category for s in samples])
    assert mean == 1.0 and set(by) == set(world.T2I_CATEGORIES) and all(v == 1.0 for v in by.values())


def test_geneval_of_mismatched_scenes_is_low():
    samples = _t2i()
    wrong = [world.Scene((None,) * 4, "white")] * len(samples)  # nothing drawn satisfies any spec
    mean, by = metrics.geneval(wrong, [s.spec for s in samples], [s.category for s in samples])
    assert mean == 0.0 and all(v == 0.0 for v in by.values())


def test_geneval_means_categories_not_samples():
    spec = {"category": "single", "objects": [{"shape": "circle"}]}
    good = world.Scene((world.Obj("circle", "red"), None, None, None), "white")
    miss = {"category": "colour", "objects": [{"shape": "square", "color": "red"}]}
    mean, by = metrics.geneval([good] * 4, [spec] * 3 + [miss], ["single"] * 3 + ["colour"])
    assert by == {"single": 1.0, "colour": 0.0} and mean == 0.5


def test_gedit_is_one_for_the_targets_and_zero_for_the_unchanged_sources():
    samples = _edits("local_edit") + _edits("global_edit")
    cats = [s.category for s in samples]
    mean, by = metrics.gedit([s.target for s in samples], [s.target for s in samples], cats)
    assert mean == 1.0 and set(by) == set(world.EDIT_CATEGORIES)
    mean, by = metrics.gedit([s.source for s in samples], [s.target for s in samples], cats)
    assert mean == 0.0 and all(v == 0.0 for v in by.values())


def test_gedit_counts_a_wrong_style_as_a_failure():
    target = world.Scene((world.Obj("circle", "red"), None, None, None), "white", "invert")
    mean, _ = metrics.gedit([world.Scene(target.cells, "white", "plain")], [target], ["style_change"])
    assert mean == 0.0


def test_category_checks():
    spec = {"category": "single", "objects": [{"shape": "circle"}]}
    with pytest.raises(ValueError, match="unknown categories"):  # an edit category is no T2I one
        metrics.geneval([world.Scene((None,) * 4, "white")], [spec], ["subject_add"])
    with pytest.raises(ValueError, match="categories"):
        metrics.gedit([world.Scene((None,) * 4, "white")], [world.Scene((None,) * 4, "white")], ["x", "y"])
    assert math.isnan(metrics.geneval([], [], [])[0])


# ----------------------------------------------------------------------------- preservation

def _local_renders():
    samples = _edits("local_edit", 24)
    src = np.stack([world.render(s.source) for s in samples])
    out = np.stack([world.render(s.target) for s in samples])
    return samples, src, out, [world.edited_cells(s.source, s.target) for s in samples]


def test_preservation_is_capped_for_perfect_edits_and_drops_when_untouched_cells_change():
    samples, src, out, edited = _local_renders()
    assert metrics.preservation(out, src, edited, 32) == metrics.PSNR_CAP
    corrupt = out.copy()
    for img, cells in zip(corrupt, edited):
        y0, y1, x0, x1 = world.cell_box(next(c for c in range(4) if c not in cells), 32)
        img[y0:y1, x0:x1] = 255 - img[y0:y1, x0:x1]
    assert metrics.preservation(corrupt, src, edited, 32) < 20


def test_preservation_ignores_the_edited_cell():
    samples, src, out, edited = _local_renders()
    noisy = out.copy()
    for img, cells in zip(noisy, edited):
        y0, y1, x0, x1 = world.cell_box(cells[0], 32)
        img[y0:y1, x0:x1] = 0
    assert metrics.preservation(noisy, src, edited, 32) == metrics.PSNR_CAP


def test_psnr_matches_its_definition():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a + 10  # mse 100
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 100))


# ----------------------------------------------------------------------------- FID

def _exact(n, mu, cov, seed=0):
    """n points whose empirical mean and (ddof=1) covariance are exactly mu and cov."""
    z = np.random.default_rng(seed).normal(size=(n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whitened exactly
    return z @ np.linalg.cholesky(cov).T + mu


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_mean_shift():
    x = np.random.default_rng(1).normal(size=(500, 16))
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-6)
    shifts = [metrics.fid(x, x + d) for d in (0.5, 1.0, 2.0)]
    assert shifts == pytest.approx([16 * 0.25, 16 * 1.0, 16 * 4.0])  # |d|^2 over 16 dims


def test_fid_matches_the_closed_form_for_diagonal_covariances():
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    a, b = _exact(400, mu_a, np.diag(var_a)), _exact(300, mu_b, np.diag(var_b), seed=2)
    want = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert metrics.fid(a, b) == pytest.approx(want, rel=1e-8)
    assert metrics.fid(b, a) == pytest.approx(want, rel=1e-8)  # symmetric


def test_fid_matches_closed_forms_for_full_covariances():
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(5, 5)))
    va, vb = np.array([1.0, 2.0, 3.0, 0.5, 4.0]), np.array([2.0, 2.0, 1.0, 0.5, 1.0])
    # Commuting covariances (same eigenvectors): the cross term is sum sqrt(va * vb).
    a = _exact(300, np.zeros(5), q @ np.diag(va) @ q.T)
    b = _exact(300, np.ones(5), q @ np.diag(vb) @ q.T, seed=4)
    assert metrics.fid(a, b) == pytest.approx(5 + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2), rel=1e-8)
    # Non-commuting 2x2: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) with M ~ A B.
    ca, cb = np.array([[2.0, 0.8], [0.8, 1.0]]), np.array([[1.0, -0.3], [-0.3, 3.0]])
    cross = math.sqrt(np.trace(ca @ cb) + 2 * math.sqrt(np.linalg.det(ca) * np.linalg.det(cb)))
    a, b = _exact(200, np.zeros(2), ca), _exact(250, np.zeros(2), cb, 5)
    assert metrics.fid(a, b) == pytest.approx(np.trace(ca) + np.trace(cb) - 2 * cross, rel=1e-8)
    assert metrics.fid(a, b) == pytest.approx(metrics.fid(b, a), rel=1e-8)


def test_fid_rejects_mismatched_features():
    with pytest.raises(ValueError, match="fid"):
        metrics.fid(np.zeros((10, 3)), np.zeros((10, 4)))


# ----------------------------------------------------------------------------- CLIP / realism

class _Stub:
    def clip_score(self, images, texts):
        import torch

        return torch.tensor([10.0, 30.0])

    def realism(self, images):
        import torch

        return torch.tensor([0.2, 0.4])


def test_clip_score_and_realism_are_means_of_the_evaluator():
    assert metrics.clip_score(_Stub(), None, ["a", "b"]) == pytest.approx(20.0)
    assert metrics.realism(_Stub(), None) == pytest.approx(0.3)


def test_realism_gap_closure():
    assert metrics.realism_gap_closure(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert metrics.realism_gap_closure(0.2, 0.2, 0.8) == 0.0
    assert metrics.realism_gap_closure(0.8, 0.2, 0.8) == 1.0
    assert math.isnan(metrics.realism_gap_closure(0.5, 0.3, 0.3))


# ----------------------------------------------------------------------------- with the evaluator

@pytest.mark.slow
def test_trained_evaluator_scores_real_test_renders_as_perfect():
    from pipeline.data.shards import to_tensor
    from tests.test_evaluator import trained_evaluator

    ev = trained_evaluator()
    t2i = _t2i(120)
    parsed = ev.parse(np.stack([world.render(s.target) for s in t2i]))
    assert metrics.geneval(parsed, [s.spec for s in t2i], [s.category for s in t2i])[0] >= 0.98
    edits = _edits("local_edit", 120) + _edits("global_edit", 60)
    targets = np.stack([world.render(s.target) for s in edits])
    sources = np.stack([world.render(s.source) for s in edits])
    cats, want = [s.category for s in edits], [s.target for s in edits]
    assert metrics.gedit(ev.parse(targets), want, cats)[0] >= 0.98
    assert metrics.gedit(ev.parse(sources), want, cats)[0] <= 0.02  # doing nothing is no edit
    plain = np.stack([world.render(s.target) for s in t2i])
    real = np.stack([world.render(s.target) for s in world.make_bucket("realism", "test", 120)])
    assert metrics.realism(ev, real) > 0.95 and metrics.realism(ev, plain) < 0.05
    f_plain, f_real = ev.features(to_tensor(plain)).numpy(), ev.features(real).numpy()
    # Two halves of one distribution are far closer than plain vs realistic renders.
    assert 3 * metrics.fid(f_plain[:60], f_plain[60:]) < metrics.fid(f_plain, f_real)


def test_scoring_rules_in_closed_form():
    """`scoring.score`: a category score is the mean of category means of the seeds' mean outcome,
    GEdit local/global keep their own prompts, a mean score leaves NaN out, and seeds scored on
    other prompts or unknown categories are refused by name."""
    from pipeline.eval import scoring

    local, global_ = world.LOCAL_EDIT_CATEGORIES[0], world.GLOBAL_EDIT_CATEGORIES[0]
    cats = [local] * 3 + [global_]
    seeds = [{"gedit": {"ok": [1, 0, 0, 1], "category": cats}, "realism": [0.2, math.nan, 0.4, 0.0]},
             {"gedit": {"ok": [1, 1, 0, 0], "category": cats}, "realism": [0.4, math.nan, 0.0, 0.2]}]
    # seeds' mean: local (1 + .5 + 0) / 3 = .5, global .5 -> .5; local alone .5; global alone .5
    assert scoring.score(seeds, "gedit")["value"] == pytest.approx(0.5)
    assert scoring.score(seeds[:1], "gedit")["value"] == pytest.approx((1 / 3 + 1) / 2)
    assert scoring.score(seeds[:1], "gedit_local")["value"] == pytest.approx(1 / 3)
    assert scoring.score(seeds[:1], "gedit_global")["value"] == 1.0
    assert scoring.by_category(seeds, "gedit") == pytest.approx({local: 0.5, global_: 0.5})
    assert scoring.score(seeds, "realism")["value"] == pytest.approx(0.2)  # (.3 + .2 + .1) / 3
    lo, hi = scoring.score(seeds, "realism")["ci"]
    assert lo <= 0.2 <= hi and lo < hi
    with pytest.raises(ValueError, match="different gedit prompts"):
        scoring.score([seeds[0], {**seeds[1], "gedit": {"ok": [1] * 4, "category": [global_] * 4}}], "gedit")
    with pytest.raises(ValueError, match=r"unknown gedit categories \['sparkle'\]"):
        scoring.score([{"gedit": {"ok": [1], "category": ["sparkle"]}}], "gedit")
