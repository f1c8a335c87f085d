import json

from pipeline import report
from pipeline.data import world
from tests.conftest import tiny_cfg


def _metrics(gedit, geneval):
    return {"gedit": gedit, "geneval": geneval, "fid": 12.5, "clip_score": 40.0, "preservation": 30.0,
            "realism": 0.1, "nfe": 16, "sec_per_image": 0.01,
            "gedit_by_category": {c: gedit for c in world.EDIT_CATEGORIES},
            "geneval_by_category": {c: geneval for c in world.T2I_CATEGORIES}}


def test_table_has_every_evaluated_model_in_order_and_the_evaluator_accuracy(tmp_path):
    cfg = tiny_cfg()
    (tmp_path / "eval").mkdir()
    for name, scores in {"danceopd": (0.9, 0.8), "base": (0.1, 0.7), "local_edit": (0.5, 0.6)}.items():
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps(_metrics(*scores)))
    (tmp_path / "evaluator.json").write_text(json.dumps({"scene_accuracy": 0.9975}))
    order = report.model_order(cfg.experts, cfg.distill.methods)
    results = report.collect(order, tmp_path / "eval", tmp_path / "evaluator.json", tmp_path / "router.json",
                             cfg.fields)
    assert results["router"] == {} and results["cfg_absorbed"] is False
    assert [r["model"] for r in results["models"]] == ["base", "local_edit", "danceopd"]  # sources first
    table = report.markdown(results)
    assert "**0.9975**" in table
    row = next(line for line in table.splitlines() if line.startswith("| `danceopd`"))
    assert row.split(" | ")[1:4] == ["student", "0.900", "0.900"] and "| 0.800 |" in row
    files = report.write(results, tmp_path / "report")
    assert [p.name for p in files] == ["results.md", "results.json", "scores.png"]
    assert (tmp_path / "report" / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "report" / "results.json").read_text())["models"][0]["model"] == "base"
