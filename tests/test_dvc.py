"""dvc.yaml lint, and a real `dvc repro` of a tiny config in a temporary git repo."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, tiny_raw

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _stages():
    """(name, stage) for every stage, foreach stages expanded over their items as DVC does."""
    for name, stage in DVC["stages"].items():
        if "foreach" not in stage:
            yield name, stage
            continue
        items = stage["foreach"]
        if isinstance(items, str):
            items = _lookup(re.fullmatch(r"\$\{(.+)\}", items).group(1))
        pairs = items.items() if isinstance(items, dict) else enumerate(items)
        for key, item in pairs:
            text = yaml.safe_dump(stage["do"]).replace("${key}", str(key)).replace("${item}", str(item))
            yield f"{name}@{key}", yaml.safe_load(text)


def _lookup(dotted: str):
    node = PARAMS
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"{dotted!r} is not in params.yaml"
        node = node[part]
    return node


def _script(cmd: str) -> str:
    match = re.search(r"python -m stages\.(\w+)", cmd)
    assert match, f"stage cmd {cmd!r} does not run `python -m stages.<name>`"
    return f"stages/{match.group(1)}.py"


def _pipeline_imports(path: Path, seen: set[str]) -> set[str]:
    """The pipeline/*.py files `path` imports, transitively."""
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline":
            names = [f"pipeline/{a.name}.py" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline."):
            names = [node.module.replace(".", "/") + ".py"]
        for name in names:
            if name not in seen and (ROOT / name).exists():
                seen.add(name)
                _pipeline_imports(ROOT / name, seen)
    return seen


@pytest.mark.parametrize("name,stage", list(_stages()))
def test_stage_script_and_its_modules_are_deps(name, stage):
    script = _script(stage["cmd"])
    deps = set(stage["deps"])
    assert script in deps, f"{name}: its script {script} is not in its deps"
    missing = _pipeline_imports(ROOT / script, set()) - deps
    assert not missing, f"{name}: imports {sorted(missing)} but does not list them in deps"


@pytest.mark.parametrize("name,stage", list(_stages()))
def test_stage_params_exist(name, stage):
    for key in stage.get("params", []):
        _lookup(str(key))


def _tiny_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pipeline", "stages", "external"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_raw(), sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        _run(cmd, repo)
    return repo


def _run(cmd: list[str], cwd: Path) -> str:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_tiny_dvc_repro(tmp_path):
    """The whole pipeline on the tiny config, then the artefacts, then a no-op second repro."""
    from pipeline import backbone, data, world

    repo = _tiny_repo(tmp_path)
    _run(["dvc", "repro"], repo)
    assert (repo / "dvc.lock").exists()
    assert len(data.read_manifest(repo / "data" / "manifest.parquet")) == 4 * (12 + 6)
    assert len(data.read_records(repo / "data" / "shards", "local_edit", "train")) == 12
    models = repo / "data" / "models"
    folders = [models / "base", *(models / "experts").glob("*/"), *(models / "baselines").glob("*/"),
               *(models / "students").glob("*/")]
    assert sorted(f.name for f in folders) == ["base", "danceopd", "dense", "global_edit", "joint", "local_edit",
                                               "merge"]
    for folder in folders:
        assert backbone.load(folder).transformer.config.num_layers == backbone.SIZES["tiny"]["num_layers"]
        assert (folder / "samples.png").stat().st_size > 0 and (folder / "train_log.json").exists()
    assert json.loads((repo / "data" / "metrics" / "router.json").read_text())["labelled"] == 18
    names = [f.name for f in folders] + ["teacher", "teacher_cfg"]
    for name in names:
        result = json.loads((repo / "data" / "metrics" / f"{name}.json").read_text())
        assert set(result["gedit_by_category"]) == set(world.EDIT_CATEGORIES), name
        assert set(result["geneval_by_category"]) == set(world.T2I_CATEGORIES), name
        assert 0 <= result["geneval"] <= 1 and 0 <= result["gedit"] <= 1 and result["fid"] >= 0
        assert (repo / "data" / "samples" / f"{name}.png").stat().st_size > 0
    assert json.loads((repo / "data" / "metrics" / "teacher_cfg.json").read_text())["nfe"] == 2 * 2
    table = (repo / "report" / "results.md").read_text()
    assert all(f"`{name}`" in table for name in names) and (repo / "report" / "scores.png").exists()
    assert not list(models.rglob("*.partial"))  # checkpoints are dropped once the model is saved
    assert "didn't change" in _run(["dvc", "repro"], repo)
    assert "up to date" in _run(["dvc", "status"], repo)
