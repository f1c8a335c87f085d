"""pipeline.report: the paper-shaped tables, seeds as a level of the bootstrap, and each claim's
verdict from the paired interval."""
import json
import math

import numpy as np

from pipeline import report
from pipeline.data import world
from tests.conftest import repo_cfg

N = 60


def _write(root, name, gedit_rate, geneval_rate, realism=0.1, seed=0):
    """A model's metrics and per-sample outcomes with the given success rates (a float, or per GEdit
    category), drawn from `seed`: two models written with one seed share their outcomes."""
    rng = np.random.default_rng(seed)
    cats = lambda known: [known[i % len(known)] for i in range(N)]  # noqa: E731
    gedit_cats = cats(world.EDIT_CATEGORIES)
    rates = [gedit_rate.get(c, 0.5) if isinstance(gedit_rate, dict) else gedit_rate for c in gedit_cats]
    outcomes = {
        "geneval": {"ok": (rng.random(N) < geneval_rate).tolist(), "category": cats(world.T2I_CATEGORIES)},
        "gedit": {"ok": (rng.random(N) < np.asarray(rates)).tolist(), "category": gedit_cats},
        "preservation": rng.normal(30, 2, N).tolist(), "clip_score": rng.normal(40, 5, N).tolist(),
        "realism": np.clip(rng.normal(realism, 0.02, N), 0, 1).tolist()}
    metrics = {"kid": 0.01, "kid_ci": [0.005, 0.02], "fid": 300.0, "fid_floor": 200.0, "nfe": 16}
    for folder, payload in (("eval", metrics), ("outcomes", outcomes)):
        path = root / folder / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload))


def _results(tmp_path):
    cfg = repo_cfg()
    (tmp_path / "evaluator.json").write_text(json.dumps({"scene_accuracy": 0.9975}))
    return report.collect(tmp_path / "eval", tmp_path / "outcomes", tmp_path / "evaluator.json",
                          tmp_path / "router.json", cfg.settings, cfg.fields)


def test_verdicts_come_from_the_paired_interval_with_seeds_as_a_level(tmp_path):
    _write(tmp_path, "sources/base", 0.0, 0.5, seed=1)
    _write(tmp_path, "sources/edit", {"subject_add": 0.0}, 0.3, seed=2)  # no teacher passes subject_add
    _write(tmp_path, "sources/realism", 0.0, 0.5, realism=0.9, seed=3)
    _write(tmp_path, "t2i_edit/teacher", {"subject_add": 0.0}, 0.5, seed=4)
    _write(tmp_path, "t2i_edit/joint", 0.99, 0.5, seed=5)
    for seed in (0, 1, 2):  # three seeds of DanceOPD, and of off-policy with the very same outcomes
        _write(tmp_path, f"t2i_edit/danceopd-s{seed}", 0.9, 0.5, seed=seed)
        _write(tmp_path, f"t2i_edit/offpolicy-s{seed}", 0.9, 0.5, seed=seed)
        _write(tmp_path, f"realism/danceopd-s{seed}", 0.0, 0.5, realism=0.8, seed=10 + seed)
    _write(tmp_path, "t2i_edit/diffusionopd-s0", 0.2, 0.5, seed=6)  # one seed
    results = _results(tmp_path)
    dance = results["models"]["t2i_edit/danceopd"]
    assert dance["seeds"] == 3 and dance["student"] and not results["models"]["t2i_edit/joint"]["student"]
    lo, hi = dance["gedit"]["ci"]
    assert lo <= dance["gedit"]["value"] <= hi
    assert set(dance) >= {"gedit_local", "gedit_global", "clip_score"}
    claims = {c["id"]: c for c in results["claims"]}
    assert len([c for c in claims if c.startswith("2A-")]) == 10 and len([c for c in claims if c.startswith("2B-")]) == 12
    assert claims["2A-1"]["b"] == "t2i_edit/diffusionopd" and claims["2A-1"]["verdict"] == "reproduced (1 seed)"
    assert claims["2A-1"]["seeds"] == [3, 1]
    off = claims["2A-2"]["difference"]  # identical outcomes: no difference; seeds are drawn per model (unpaired)
    assert claims["2A-2"]["b"] == "t2i_edit/offpolicy" and off["value"] == 0.0 and off["ci"][0] < 0 < off["ci"][1]
    assert claims["2A-2"]["verdict"] == "tie"
    assert claims["2A-3"]["b"] == "t2i_edit/joint" and claims["2A-3"]["verdict"] == "contradicted"  # 0.9 vs 0.99
    assert claims["2A-4"]["verdict"] == "not run"  # no merge in this run
    d = claims["2A-1"]["difference"]
    assert d["ci"][0] <= d["value"] <= d["ci"][1] and "clip_difference" in claims["2A-1"]
    assert all(c["verdict"] == "not run" for i, c in claims.items() if i.startswith(("2B-", "D-")))
    closure = results["realism"]["students"]["realism/danceopd"]["closure"]
    assert abs(closure["value"] - (0.8 - 0.1) / (0.9 - 0.1)) < 0.02
    assert closure["ci"][0] <= closure["value"] <= closure["ci"][1] and closure["ci"][1] - closure["ci"][0] < 0.05
    assert results["realism"]["teacher_geneval"]["value"] > 0  # the realism teacher's GenEval is shown
    assert results["can_say"]["silent"] == ["subject_add"]
    md = report.markdown(results)
    assert "**0.9975**" in md and "**DanceOPD** (3 seeds)" in md and "| 5.347 | 0.849 |" in md
    assert "Routed teacher" in md and "GEdit local" in md and "CLIP" in md
    assert "**reproduced (1 seed)**" in md and "**tie**" in md and "**contradicted**" in md and "85.3%" in md
    assert "no teacher passes subj-add" in md
    assert "Table 2B: Local + Global edit\n\nNot run in this configuration. To fill it: `dvc exp run" in md
    files = report.write(results, tmp_path / "report")
    assert [p.name for p in files] == ["results.md", "results.json", "scores.png"]
    assert (tmp_path / "report" / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "report" / "results.json").read_text())["claims"][0]["id"] == "2A-1"


def test_seed_to_seed_spread_widens_a_claim_s_interval(tmp_path):
    """The same mean over three seeds, once alike and once far apart: the paired interval against a
    fixed baseline is wider when the seeds disagree (they are a level of the bootstrap, not pooled)."""
    widths = []
    for rates in ((0.5, 0.5, 0.5), (0.1, 0.5, 0.9)):
        root = tmp_path / str(rates[0])
        _write(root, "sources/edit", 0.5, 0.5, seed=1)
        for seed, rate in enumerate(rates):
            _write(root, f"t2i_edit/danceopd-s{seed}", rate, 0.5, seed=0)  # one draw: the rates set the spread
        claim = next(c for c in _results(root)["claims"] if c["b"] == "sources/edit" and c["score"] == "gedit")
        widths.append(claim["difference"]["ci"][1] - claim["difference"]["ci"][0])
    assert widths[1] > 1.5 * widths[0] and not math.isnan(widths[0])


def test_the_report_scores_a_one_seed_model_as_its_evaluation_did(tmp_path):
    """Evaluation (per model, `evaluation.scores`) and the report (over seeds, `report.Model.score`)
    score by one rule (`pipeline.eval.scoring`): on one seed's outcomes the very same floats."""
    from pipeline.eval import evaluation

    _write(tmp_path, "sources/base", {"subject_add": 0.2, "style_change": 0.9}, 0.4, realism=0.3, seed=7)
    outcomes = json.loads((tmp_path / "outcomes" / "sources" / "base.json").read_text())
    outcomes["preservation"][3] = math.nan  # a global edit's: no untouched cells
    (tmp_path / "outcomes" / "sources" / "base.json").write_text(json.dumps(outcomes))
    evaluated = evaluation.scores(outcomes)
    model = report.load_model(tmp_path / "eval", tmp_path / "outcomes", "sources/base")
    for score in ("geneval", "gedit", "preservation", "clip_score", "realism"):
        got = model.score(score)
        assert got["value"] == evaluated[score] and got["ci"] == evaluated[f"{score}_ci"], score
