"""A failing stage says what went wrong in one line; `DANCEOPD_DEBUG=1` adds the traceback."""
import os
import subprocess
import sys

import yaml

from tests.conftest import ROOT, tiny_raw


def _stage(module: str, args: list[str], cwd, **env) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"} | env
    env.pop("DVC_STAGE", None)
    return subprocess.run([sys.executable, "-m", f"stages.{module}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_bad_key_is_one_line_and_the_traceback_is_one_switch_away(tmp_path):
    raw = tiny_raw()
    raw["eval"]["gudiance"] = 2.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    failed = _stage("validate", [], tmp_path)
    assert failed.returncode == 1 and failed.stderr.splitlines() == [
        "validate: params.yaml: eval.gudiance: unknown key (expected one of ['count', 'steps', 'guidance', "
        "'image_guidance', 'seed', 'batch_size', 'evaluator']) (DANCEOPD_DEBUG=1 shows the traceback)"]
    debug = _stage("validate", [], tmp_path, DANCEOPD_DEBUG="1")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "ConfigError: params.yaml: eval.gudiance: unknown key" in debug.stderr


def test_a_missing_input_of_a_heavier_stage_is_one_line_naming_it(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw()))
    failed = _stage("embed", ["--manifest", "data/manifest.parquet", "--shards", "data/shards", "--out",
                              "data/embeddings"], tmp_path)
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert lines[-1].startswith("embed: ") and "data/manifest.parquet" in lines[-1], lines
    assert not (tmp_path / "data" / "embeddings").exists()
