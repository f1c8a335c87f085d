"""pipeline.report: the paper-shaped tables with intervals, seeds pooled, and the claims' verdicts."""
import json

import numpy as np

from pipeline import report
from pipeline.data import world
from tests.conftest import repo_cfg


def _write(root, name, gedit_rate, geneval_rate, realism=0.1, n=60, seed=0):
    """A model's metrics and per-sample outcomes with the given success rates (every category alike)."""
    rng = np.random.default_rng(seed)
    cats = lambda known: [known[i % len(known)] for i in range(n)]  # noqa: E731
    outcomes = {
        "geneval": {"ok": (rng.random(n) < geneval_rate).tolist(), "category": cats(world.T2I_CATEGORIES)},
        "gedit": {"ok": (rng.random(n) < gedit_rate).tolist(), "category": cats(world.EDIT_CATEGORIES)},
        "preservation": rng.normal(30, 2, n).tolist(), "clip_score": rng.normal(40, 5, n).tolist(),
        "realism": np.clip(rng.normal(realism, 0.02, n), 0, 1).tolist()}
    metrics = {"kid": 0.01, "kid_ci": [0.005, 0.02], "fid": 300.0, "fid_floor": 200.0, "nfe": 16}
    for folder, payload in (("eval", metrics), ("outcomes", outcomes)):
        path = root / folder / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload))


def test_the_report_pools_seeds_gives_intervals_and_calls_only_separated_directions(tmp_path):
    cfg = repo_cfg()
    _write(tmp_path, "sources/base", 0.0, 0.5)
    _write(tmp_path, "sources/edit", 0.4, 0.3)
    _write(tmp_path, "sources/realism", 0.0, 0.5, realism=0.9)
    for seed in (0, 1, 2):  # three seeds of DanceOPD: pooled
        _write(tmp_path, f"t2i_edit/danceopd-s{seed}", 0.9, 0.5, seed=seed)
    _write(tmp_path, "t2i_edit/diffusionopd-s0", 0.2, 0.5)
    _write(tmp_path, "t2i_edit/offpolicy-s0", 0.85, 0.5, seed=7)  # as good as DanceOPD: a tie
    _write(tmp_path, "realism/danceopd-s0", 0.0, 0.5, realism=0.8)
    (tmp_path / "evaluator.json").write_text(json.dumps({"scene_accuracy": 0.9975}))
    results = report.collect(tmp_path / "eval", tmp_path / "outcomes", tmp_path / "evaluator.json",
                             tmp_path / "router.json", cfg.settings, cfg.fields)
    dance = results["models"]["t2i_edit/danceopd"]
    assert dance["seeds"] == 3 and len(json.loads((tmp_path / "outcomes/t2i_edit/danceopd-s0.json").read_text())[
        "gedit"]["ok"]) == 60
    lo, hi = dance["gedit"]["ci"]
    assert lo < dance["gedit"]["value"] < hi and hi - lo < 0.15  # 180 pooled samples
    verdicts = {c["id"]: c["verdict"] for c in results["claims"]}
    assert verdicts["2A-1"] == "reproduced"  # 0.9 vs 0.2: separated
    assert verdicts["2A-2"] == "tie"  # 0.9 vs 0.85: overlapping intervals
    assert verdicts["2A-4"] == "tie"  # GenEval 0.5 vs 0.5
    assert verdicts["2B-1"] == "not run"  # Table 2B's students were not trained here
    closure = results["realism"]["students"]["realism/danceopd"]["closure"]
    assert abs(closure - (0.8 - 0.1) / (0.9 - 0.1)) < 0.02
    md = report.markdown(results)
    assert "**0.9975**" in md and "Table 2A" in md and "**DanceOPD** (3 seeds)" in md and "| 5.347 | 0.849 |" in md
    assert "**reproduced**" in md and "**tie**" in md and "85.3%" in md
    assert "### Table 2B: Local + Global edit\n\nNot run in this configuration" in md
    files = report.write(results, tmp_path / "report")
    assert [p.name for p in files] == ["results.md", "results.json", "scores.png"]
    assert (tmp_path / "report" / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "report" / "results.json").read_text())["claims"][0]["id"] == "2A-1"
