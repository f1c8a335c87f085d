"""pipeline.figures: the sweeps' experiments, the paper's claims decided by paired intervals, the plots."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from pipeline import figures
from pipeline.data import world

N = 240


def _outcomes(gedit: float, geneval: float = 0.5, realism: float = 0.2, seed: int = 0) -> dict:
    """Per-sample outcomes at the given rates; one `seed` draws the same uniforms, so two rates differ
    exactly on the prompts between them (a paired difference with no prompt noise)."""
    u = np.random.default_rng(seed).random((3, N))
    cats = lambda known: [known[i % len(known)] for i in range(N)]  # noqa: E731
    return {"gedit": {"ok": (u[0] < gedit).tolist(), "category": cats(world.EDIT_CATEGORIES)},
            "geneval": {"ok": (u[1] < geneval).tolist(), "category": cats(world.T2I_CATEGORIES)},
            "preservation": [20.0] * N, "clip_score": [30.0] * N, "realism": (u[2] * 2 * realism).tolist()}


def test_every_point_is_one_experiment_and_the_default_is_the_shared_reference():
    assert figures.experiment("query", "low") == (figures.REFERENCE, figures.COMMON)
    assert figures.experiment("k", "1")[0] == figures.experiment("cfg", "a1_b1")[0] == figures.REFERENCE
    name, overrides = figures.experiment("k", "4")
    assert name == "k_4" and overrides["distill.methods.danceopd.queries"] == "4"
    assert overrides["settings.t2i_edit.methods"] == "[danceopd]" and overrides["run.baselines"] == "[]"
    name, overrides = figures.experiment("cfg", "a3.5_b2")
    assert name == "cfg_a3.5_b2" and overrides["fields.cfg_scale"] == "3.5" and overrides["eval.guidance"] == "2.0"
    assert figures.experiment("realism", "offpolicy")[1]["train.sample_every"] != "0"
    for sweep, (_, points, _, claims) in figures.SWEEPS.items():  # every claim names points of its sweep
        assert all(a in points and b in points for a, b, *_ in claims), sweep


def test_a_claim_is_decided_by_the_paired_interval():
    points = {"low": _outcomes(0.6), "mid": _outcomes(0.3), "high": _outcomes(0.6)}  # same uniforms: paired
    data = figures.ablation("query", points)
    claims = {(c["a"], c["b"]): c for c in data["claims"]}
    assert claims["low", "mid"]["verdict"] == "reproduced" and claims["low", "mid"]["difference"]["ci"][0] > 0
    assert claims["low", "high"]["verdict"] == "tie" and claims["low", "high"]["difference"]["value"] == 0
    assert "difference" not in data["points"]["low"] and data["points"]["mid"]["difference"]["gedit_local"]["value"] < 0
    contradicted = figures.claims("query", {"low": _outcomes(0.2), "mid": _outcomes(0.6)})
    assert contradicted[0]["verdict"] == "contradicted"
    band = figures.claims("rollout", {"8": _outcomes(0.5), "16": _outcomes(0.5), "28": _outcomes(0.9)})
    assert [c["verdict"] for c in band] == ["reproduced", "contradicted"]  # "=": one band holds 0


def test_collected_sweeps_are_plotted_and_read(tmp_path):
    ablation = figures.ablation("k", {"1": _outcomes(0.6), "4": _outcomes(0.4), "16": _outcomes(0.5)})
    cfg = figures.cfg_grid({"a1_b1": _outcomes(0.4), "a3.5_b1": _outcomes(0.5), "a3.5_b2": _outcomes(0.6)},
                           {"a1_b1": 16, "a3.5_b1": 16, "a3.5_b2": 32})
    init, teacher = _outcomes(0.1, realism=0.1), _outcomes(0.1, realism=0.5)
    realism = figures.realism_curves(
        {"danceopd": [{"step": s, "realism": 0.1 + s / 1000, "lo": 0.05, "hi": 0.3} for s in (0, 50, 100)]},
        {"danceopd": _outcomes(0.1, realism=0.3), "offpolicy": _outcomes(0.1, realism=0.1)}, init, teacher)
    assert realism["closure"]["danceopd"]["value"] == pytest.approx(0.5)  # (0.3 - 0.1) / (0.5 - 0.1)
    assert realism["claims"][0]["verdict"] == "reproduced" and cfg["grid"]["a3.5_b2"]["nfe"] == 32
    assert cfg["claims"][0]["verdict"] == "reproduced" and len(cfg["claims"]) == 1  # (7, 7) has not run
    collected = {"k": ablation, "cfg": cfg, "realism": realism}
    written = figures.write(collected, tmp_path / "figures", tmp_path / "figures.md")
    for sweep in collected:
        image = Image.open(tmp_path / "figures" / f"{sweep}.png")
        assert image.size[0] > 400 and len(set(image.convert("L").getdata())) > 10, sweep  # drawn, not blank
    page = (tmp_path / "figures.md").read_text()
    assert all(f"![{s}](figures/{s}.png)" in page for s in collected) and written[-1] == tmp_path / "figures.md"
    assert "1 above 4 on gedit: **reproduced**" in page and "danceopd: closure 0.500" in page
    assert json.loads((tmp_path / "figures" / "points.json").read_text())["k"]["claims"][1]["b"] == "16"
    assert not math.isnan(ablation["points"]["4"]["difference"]["geneval"]["value"])
