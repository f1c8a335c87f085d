"""dvc.yaml lint, and a real `dvc repro` of a tiny config in a temporary git repo."""
from __future__ import annotations

import ast
import copy
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.conftest import ROOT, tiny_raw

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())
# Every optional row on (the rows `run` and empty method lists leave out), so every stage is checked.
PARAMS = DEFAULT | {
    "run": {"experts": list(DEFAULT["experts"]), "baselines": ["t2i_edit", "local_global"],
            "teachers": ["t2i_edit", "local_global", "diagnostic"]},
    "settings": {name: s | {"methods": s["methods"] or list(DEFAULT["distill"]["methods"])}
                 for name, s in DEFAULT["settings"].items()}}


def _values(spec, params):
    """A foreach or matrix list: literal, or a ${params.key} reference."""
    if isinstance(spec, str):
        return _lookup(re.fullmatch(r"\$\{(.+)\}", spec).group(1), params)
    return spec


def _stages(dvc=DVC, params=PARAMS):
    """(name, stage) for every stage, foreach and matrix stages expanded over their items as DVC does."""
    for name, stage in dvc["stages"].items():
        if "matrix" in stage:
            body = yaml.safe_dump({k: v for k, v in stage.items() if k != "matrix"})
            keys = list(stage["matrix"])
            for combo in itertools.product(*(_values(v, params) for v in stage["matrix"].values())):
                text = body
                for key, value in zip(keys, combo):
                    text = text.replace(f"${{item.{key}}}", str(value))
                yield f"{name}@{'-'.join(map(str, combo))}", yaml.safe_load(text)
            continue
        if "foreach" not in stage:
            yield name, stage
            continue
        items = stage["foreach"]
        if isinstance(items, str):
            items = _lookup(re.fullmatch(r"\$\{(.+)\}", items).group(1), params)
        pairs = items.items() if isinstance(items, dict) else ((item, item) for item in items)  # DVC: name@item
        for key, item in pairs:
            text = yaml.safe_dump(stage["do"]).replace("${key}", str(key)).replace("${item}", str(item))
            yield f"{name}@{key}", yaml.safe_load(text)


def _lookup(dotted: str, params=PARAMS):
    node = params
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"{dotted!r} is not in params.yaml"
        node = node[part]
    return node


def _script(cmd: str) -> str:
    match = re.search(r"python -m stages\.(\w+)", cmd)
    assert match, f"stage cmd {cmd!r} does not run `python -m stages.<name>`"
    return f"stages/{match.group(1)}.py"


def _imported_files(node: ast.AST) -> list[str]:
    """The pipeline module files one import statement names (a module, or modules of a package)."""
    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pipeline":
        base = node.module.replace(".", "/")
        return [f"{base}/{a.name}.py" if (ROOT / base / f"{a.name}.py").exists()
                else f"{base}/{a.name}/__init__.py" if (ROOT / base / a.name).is_dir()  # a package (pipeline.config)
                else f"{base}.py" if (ROOT / f"{base}.py").exists() else f"{base}/__init__.py" for a in node.names]
    if isinstance(node, ast.Import):
        return [a.name.replace(".", "/") + ".py" for a in node.names if a.name.split(".")[0] == "pipeline"]
    return []


def _pipeline_imports(path: Path, seen: set[str]) -> set[str]:
    """The pipeline/**.py files `path` imports, transitively (through a package's __init__ to what it re-exports)."""
    for node in ast.walk(ast.parse(path.read_text())):
        for name in _imported_files(node):
            if name not in seen and (ROOT / name).is_file():
                seen.add(name)
                _pipeline_imports(ROOT / name, seen)
    return seen


def _covered(module: str, deps: set[str]) -> bool:
    return module in deps or any(module.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name,stage", list(_stages()))
def test_stage_script_and_its_modules_are_deps(name, stage):
    script = _script(stage["cmd"])
    deps = set(stage["deps"])
    assert script in deps, f"{name}: its script {script} is not in its deps"
    missing = sorted(m for m in _pipeline_imports(ROOT / script, set()) if not _covered(m, deps))
    assert not missing, f"{name}: imports {missing} but does not list them (or their package) in deps"


@pytest.mark.parametrize("name,stage", list(_stages()))
def test_stage_code_deps_are_all_used(name, stage):
    """A code dep the stage never imports would rerun it for nothing; a package dep must be needed whole-ish."""
    imported = _pipeline_imports(ROOT / _script(stage["cmd"]), set())
    for dep in (d for d in stage["deps"] if d.startswith("pipeline")):
        assert any(_covered(m, {dep}) for m in imported), f"{name}: {dep} is a dep but never imported"
        if (ROOT / dep).is_dir():
            assert not any(d.startswith(dep + "/") for d in stage["deps"]), f"{name}: {dep} is listed twice"


def test_the_evaluator_does_not_depend_on_the_model_stack():
    deps = dict(_stages())["train_evaluator"]["deps"]
    assert not [d for d in deps if d == "pipeline/core" or d.startswith("pipeline/core/")
                and d != "pipeline/core/compute.py"], deps


# treeverse/dvc#10296: the run-cache key drops every dict key named so, at any depth of a stage's
# lock entry, params included; a stage would then check out stale outputs when such a param changes.
RUN_CACHE_BLIND = {"size", "nfiles"}


def _leaves(node, prefix=()):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, (*prefix, key))
    else:
        yield prefix


def test_no_params_key_is_named_what_the_run_cache_cannot_see():
    blind = [".".join(path) for path in _leaves(PARAMS) if RUN_CACHE_BLIND & set(path)]
    assert not blind, f"rename {blind}: DVC's run-cache ignores keys named {sorted(RUN_CACHE_BLIND)}"


def _run_cache_blind_params(lock: dict) -> list[str]:
    """stage:key for every declared param whose change would leave the stage's run-cache key unchanged."""
    from dvc.stage.cache import _get_cache_hash

    blind = []
    for name, entry in lock["stages"].items():
        for path in _leaves(entry.get("params", {}).get("params.yaml", {})):
            if not path:  # a stage without params
                continue
            changed = copy.deepcopy(entry)
            node = changed["params"]["params.yaml"]
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = f"{node[path[-1]]}-changed"
            if _get_cache_hash(copy.deepcopy(entry), key=True) == _get_cache_hash(changed, key=True):
                blind.append(f"{name}:{'.'.join(path)}")
    return blind


def _declared(stage) -> list[str]:
    """A stage's params keys; "" when it declares the whole params.yaml (`- params.yaml:`). An item
    `params.yaml: [keys]` (a shared, anchored list) contributes its keys."""
    keys = []
    for item in stage.get("params", []):
        if not isinstance(item, dict):
            keys.append(str(item))
            continue
        for file, listed in item.items():
            assert file == "params.yaml", f"params from {file}: every hyperparameter lives in params.yaml"
            keys += [""] if listed is None else [str(k) for k in listed]
    return keys


@pytest.mark.parametrize("name,stage", list(_stages()))
def test_stage_params_exist(name, stage):
    for key in _declared(stage):
        if key:
            _lookup(key)


def test_a_student_depends_on_its_setting_s_routes_and_init_only():
    """Adding a seed or a method to a setting must not rerun the students it already has: no distill
    stage declares the whole setting, or its seeds or methods."""
    for name, stage in _stages():
        if name.startswith("distill_"):
            setting = name.split("@")[0].removeprefix("distill_")
            declared = set(_declared(stage))
            assert {f"settings.{setting}.routes", f"settings.{setting}.init"} <= declared, name
            assert not declared & {f"settings.{setting}", f"settings.{setting}.seeds", f"settings.{setting}.methods",
                                   "settings", ""}, name


def test_the_committed_lock_holds_only_the_stages_dvc_yaml_defines():
    """DVC never drops a lock entry whose stage is gone (a renamed stage, a matrix row the params no
    longer list); an entry dvc.yaml does not define is dead weight for every reader of the lock."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        defined = {stage.addressing for stage in repo.index.stages}
    locked = set(yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"])
    assert locked - defined == set(), "dvc.lock: drop the entries of stages dvc.yaml no longer defines"


def test_the_committed_lock_vouches_for_every_committed_file_it_names():
    """Every dep and out the lock hashes that git carries (code, params, the tracked metrics,
    outcomes and report) is the committed file: a code change committed without its lock, or a lock
    whose data hashes are another run's, shows here as `dvc status` would show it to a user."""
    from dvc.repo import Repo

    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.splitlines())
    carried = lambda path: any(f == path or f.startswith(path + "/") and not f.endswith(".gitignore")  # noqa: E731
                               for f in tracked)
    with Repo(str(ROOT)) as repo:
        status = repo.status()
    stale = sorted(f"{stage}: {kind} {path} {state}" for stage, entries in status.items()
                   for entry in entries if isinstance(entry, dict)
                   for kind, changed in entry.items() if isinstance(changed, dict)
                   for path, state in changed.items() if state == "modified" and carried(path))
    assert stale == [], "dvc.lock is not the committed files' lock:\n" + "\n".join(stale)


def _tiny_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pipeline", "stages", "external"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_raw(), sort_keys=False))
    _run(["git", "init", "-q"], repo)
    for key, value in (("user.name", "t"), ("user.email", "t@t")):  # the experiments' commits too
        _run(["git", "config", key, value], repo)
    _run(["dvc", "init", "-q"], repo)
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")  # after `dvc init`, which writes its own
    _commit(repo, "tiny")
    return repo


def _commit(repo: Path, message: str) -> None:
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def _run(cmd: list[str], cwd: Path, **env) -> str:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"} | env
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> list[str]:
    """The stages a `dvc repro` ran, from its output."""
    return sorted(re.findall(r"Running stage '([^']+)'", output))


def _undeclared_reads(repo: Path, traces: Path) -> dict[str, list[str]]:
    """Per stage, the params its code read (config tracing) that its `params:` in dvc.yaml omits."""
    read = {tuple(t["argv"]): t["read"] for t in (json.loads(p.read_text()) for p in traces.glob("*.json"))}
    tiny = yaml.safe_load((repo / "params.yaml").read_text())
    out = {}
    for name, stage in _stages(yaml.safe_load((repo / "dvc.yaml").read_text()), tiny):
        argv = tuple(stage["cmd"].split()[1:])
        declared = _declared(stage)
        assert argv in read, f"{name}: no trace of `{stage['cmd']}`"
        out[name] = [k for k in read[argv] if not any(d in ("", k) or k.startswith(d + ".") for d in declared)]
    return {name: keys for name, keys in out.items() if keys}


def _sweep_through_the_queue(repo: Path, tmp_path: Path) -> None:
    """A 2-point sweep as queued DVC experiments (`tools/sweep.py`), then collected into a figure
    from what the experiments committed, re-running nothing."""
    from mlflow.tracking import MlflowClient

    from pipeline.eval import scoring

    _commit(repo, "the tiny run")
    sweep = [sys.executable, str(ROOT / "tools" / "sweep.py")]
    try:
        _run([*sweep, "queue", "query", "--points", "low", "mid", "--start", "-j", "1", "--wait"], repo)
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, capture_output=True)
    assert {"ref", "query_mid"} <= set(_run(["dvc", "exp", "list", "--name-only"], repo).split())
    again = _run([*sweep, "queue", "query", "--points", "mid"], repo)
    assert "query_mid already exists" in again  # a point runs once
    out = _run([*sweep, "collect", "--out", str(tmp_path / "figures"), "--page", str(tmp_path / "figures.md")], repo)
    png = tmp_path / "figures" / "query.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(png).size[0] > 400
    points = json.loads((tmp_path / "figures" / "points.json").read_text())["query"]["points"]
    assert set(points) == {"low", "mid"} and points["low"]["experiment"] == "ref" and "difference" in points["mid"]
    for point, name in (("low", "ref"), ("mid", "query_mid")):  # the numbers are the experiment's outcomes
        outcomes = json.loads(_run(["git", "show", f"{_exp_commit(repo, name)}:data/outcomes/t2i_edit/danceopd-s0.json"],
                                   repo))
        assert points[point]["geneval"] == json.loads(json.dumps(scoring.score([outcomes], "geneval")))
    assert "![query](figures/query.png)" in (tmp_path / "figures.md").read_text() and "**query**" in out
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    tagged = client.search_runs([client.get_experiment_by_name("danceopd").experiment_id], "tags.sweep = 'query'")
    assert {r.data.tags["dvc.exp"] for r in tagged} == {"query_mid"}  # `ref` has no `_`: no sweep of its own


def _exp_commit(repo: Path, name: str) -> str:
    refs = _run(["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"], repo).split("\n")
    return next(line.split()[1] for line in refs if line.split() and line.split()[0].endswith(f"/{name}"))


def _touch_comment(path: Path) -> None:
    path.write_text(path.read_text() + "# a comment\n")


def test_tiny_dvc_repro(tmp_path):
    """The whole pipeline on the tiny config, its artefacts, what each stage read, what reruns, and sharing."""
    from mlflow.tracking import MlflowClient

    from pipeline.core import backbone, checkpoint
    from pipeline.data import shards, world

    repo = _tiny_repo(tmp_path)
    _run(["dvc", "repro"], repo, DANCEOPD_PARAMS_TRACE=str(tmp_path / "traces"))
    assert (repo / "dvc.lock").exists()
    assert len(shards.read_manifest(repo / "data" / "manifest.parquet")) == 4 * (12 + 6)
    assert len(shards.read_records(repo / "data" / "shards", "local_edit", "train")) == 12
    assert (repo / "data" / "embeddings" / "embeddings.npz").exists()
    models, metrics = repo / "data" / "models", repo / "data" / "metrics"
    folders = sorted(p.parent.relative_to(models).as_posix() for p in models.rglob("config.json")
                     if p.parent.parent.name != "evaluator" and "clip" not in p.parts)
    students = ["t2i_edit/danceopd-s0", "t2i_edit/diffusionopd-s0", "local_global/offpolicy-s0", "diagnostic/soft-s0",
                "realism/danceopd-s0", "realism/danceopd-s1"]
    assert folders == sorted(["base", *(f"experts/{e}" for e in ("edit", "global_edit", "local_edit", "realism")),
                              *(f"baselines/{s}/{b}" for s in ("t2i_edit", "local_global") for b in ("joint", "merge")),
                              *(f"students/{s}" for s in students)])
    for name in folders:  # self-describing: weights, config, scheduler, sampling card, model card, log
        folder = models / name
        assert backbone.load(folder).transformer.config.num_layers == backbone.PRESETS["tiny"]["num_layers"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["config.json", "diffusion_pytorch_model.safetensors", checkpoint.LOG, checkpoint.SAMPLING, "README.md",
             "scheduler"])
        assert checkpoint.read_sampling(folder)["text_encoder"]["encoder"] == "minilm"
    for name in ["base", "edit", "t2i_edit/joint", *students]:  # trained: its cost is a metric, not in the model
        assert json.loads((metrics / "train" / f"{name}.json").read_text())["samples_per_s"] > 0
    assert json.loads((metrics / "router.json").read_text())["labelled"] == 18
    evaluated = ["sources/base", *(f"sources/{e}" for e in ("edit", "global_edit", "local_edit", "realism")),
                 *(f"{s}/{b}" for s in ("t2i_edit", "local_global") for b in ("joint", "merge")),
                 *(f"{s}/{t}" for s in ("t2i_edit", "local_global", "diagnostic") for t in ("teacher", "teacher_cfg")),
                 *students]
    for name in evaluated:  # every score with its interval, the per-sample outcomes behind it, a grid
        result = json.loads((metrics / "eval" / f"{name}.json").read_text())
        assert set(result["gedit_by_category"]) == set(world.EDIT_CATEGORIES), name
        assert set(result["geneval_by_category"]) == set(world.T2I_CATEGORIES), name
        assert 0 <= result["geneval"] <= 1 and 0 <= result["gedit"] <= 1 and result["fid"] >= 0
        for key in (k for k in result if k.endswith("_ci")):  # every point inside its own interval
            point, (lo, hi) = result[key[:-3]], result[key]
            assert math.isnan(point) or lo - 1e-12 <= point <= hi + 1e-12, (name, key, point, lo, hi)
        assert "kid_ci" in result and "fid_ci" not in result  # FID: a biased statistic, no interval
        assert result["fid_floor"] > 0 and result["reference_size"] == 200
        outcomes = json.loads((repo / "data" / "outcomes" / f"{name}.json").read_text())
        assert len(outcomes["geneval"]["ok"]) == 6 and len(outcomes["gedit"]["ok"]) == 12
        assert (repo / "data" / "samples" / f"{name}.png").stat().st_size > 0
    assert json.loads((metrics / "eval" / "diagnostic" / "teacher_cfg.json").read_text())["nfe"] == 2 * 2
    table = (repo / "report" / "results.md").read_text()
    assert "Table 2A" in table and "Table 2B" in table and "Realism absorption" in table and "claims" in table
    assert "realism/danceopd (2 seeds)" in table and "| 1/1 | **" in table  # Table 2A's students: one seed each
    assert (repo / "report" / "scores.png").exists()
    assert not list(models.rglob("*.partial")) and not list(repo.glob("data/**/*.tmp"))
    # The report and the labelled sample grids go to git, so a fresh clone shows them, offline too.
    for path in ("report/results.md", "report/scores.png", "data/samples/sources/base.png",
                 "data/metrics/eval/sources/base.json", "data/outcomes/sources/base.json"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=repo).returncode == 1, path
    _run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert page.count("<img") >= len(evaluated) and "data/samples/t2i_edit/danceopd-s0.png" in page
    # One MLflow run per stage, named after it, none left RUNNING.
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("danceopd").experiment_id])
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert sorted(r.info.run_name for r in runs) == sorted(set(lock["stages"]) - {"validate"})
    assert {r.info.status for r in runs} == {"FINISHED"}
    # python -m pipeline.report alone recomputes the same tables and verdicts from the kept outcomes.
    _run([sys.executable, "-m", "pipeline.report", "--out", str(tmp_path / "again")], repo)
    assert (tmp_path / "again" / "results.md").read_text() == table
    # The inference command on the distilled student.
    out = _run([sys.executable, "-m", "pipeline.generate", "--task", "t2i", "--prompt", "a red circle",
                "--steps", "2", "--out", "out.png"], repo)
    said = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert said["model"] == "data/models/students/t2i_edit/danceopd-s0" and (repo / "out.png").exists()
    # Every params key a stage's code read is one its dvc.yaml entry declares (else DVC could not see
    # it), and changing any declared key changes the stage's run-cache key (else DVC would check out
    # the stale outputs of an earlier run).
    assert _undeclared_reads(repo, tmp_path / "traces") == {}
    assert _run_cache_blind_params(lock) == []
    assert "didn't change" in _run(["dvc", "repro"], repo)
    assert "up to date" in _run(["dvc", "status"], repo)
    _sweep_through_the_queue(repo, tmp_path)  # committed here, while DVC's .gitignore files keep the outputs out
    # Sharing: push to a DVC remote (a local folder here; S3/SSH the same way), lose everything, pull.
    _run(["dvc", "remote", "add", "-d", "team", str(tmp_path / "remote")], repo)
    _run(["dvc", "push"], repo)
    shutil.rmtree(repo / ".dvc" / "cache")
    for out in ("data/shards", "data/embeddings", "data/models/base", "data/models/students"):
        shutil.rmtree(repo / out)
    _run(["dvc", "pull"], repo)
    assert "up to date" in _run(["dvc", "status"], repo)
    assert backbone.load(models / "students" / "t2i_edit" / "danceopd-s0").transformer.config.num_layers == 1
    # Touching a stage script reruns the stages that run it, and nothing after them: their outputs
    # are byte-identical (no timings inside), so every downstream stage stays cached.
    _touch_comment(repo / "stages" / "train_router.py")
    assert _ran(_run(["dvc", "repro"], repo)) == ["train_router"]
    # The same through the parallel runner (`dvc repro -s` a stage, DVC deciding): the seven training
    # stages rerun, and DVC leaves every stage after them alone.
    _touch_comment(repo / "stages" / "train.py")
    out = _run([sys.executable, str(ROOT / "tools" / "repro.py"), "-j", "2"], repo)
    trained = ["train_base", "train_expert@edit", "train_expert@global_edit", "train_expert@local_edit",
               "train_expert@realism", "train_joint@local_global", "train_joint@t2i_edit"]
    assert sorted(re.findall(r"^\S+ done (\S+) in ", out, re.MULTILINE)) == trained
    assert re.findall(r"^\S+ unchanged (\S+) in ", out, re.MULTILINE) and "0 failed" in out
    assert "up to date" in _run(["dvc", "status"], repo)
    # A new seed trains and evaluates its students only; the others stay cached.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["settings"]["t2i_edit"]["seeds"] = [0, 1]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_run(["dvc", "repro"], repo)) == [
        "distill_t2i_edit@danceopd-1", "distill_t2i_edit@diffusionopd-1", "evaluate_t2i_edit@danceopd-1",
        "evaluate_t2i_edit@diffusionopd-1", "report", "validate"]
    # The canvas resolution reaches curate for real: it reruns (no stale shards from the run-cache).
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["world"]["resolution"] = 16
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_run(["dvc", "repro", "curate"], repo)) == ["curate"]
    assert shards.read_records(repo / "data" / "shards", "t2i", "test")[0].image.shape == (16, 16, 3)
    # A typo in a key that no stage declares still stops `dvc repro` before any work: `validate` depends
    # on every key, and every stage validates all of params.yaml when it starts.
    params["eval"]["gudiance"] = 2.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True,
                            env=os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert failed.returncode != 0 and "params.yaml: eval.gudiance: unknown key" in failed.stdout + failed.stderr
    assert len(_ran(failed.stdout)) == 1  # the first stage to start (any: each validates it all) stops it
