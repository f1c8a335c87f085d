"""Experiment tracking: the only module that imports mlflow; it also writes DVC metrics JSON.

DVC is the source of truth for artefacts and final metrics; MLflow is the dashboard. Every stage
invocation is one MLflow run in the experiment "danceopd", tagged with the git revision, the DVC
stage and DVC_EXP_NAME; its params are the resolved config sections it uses.

The default store is a SQLite file at an *absolute* path in the repository (`mlflow.db` at its
root): under `dvc exp run --temp` the stage runs in a copy below `.dvc/tmp/exps/`, and a relative
URI would log there and be lost. `MLFLOW_TRACKING_URI` overrides it (e.g. a team server).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
EXPERIMENT = "danceopd"


def repo_root(cwd: Path | None = None) -> Path:
    """The user's repository, also from inside a `dvc exp run --temp` copy of it."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; dataclasses and params sections become dicts (params.yaml keys)."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    elif hasattr(value, "model_dump"):  # a pipeline.config section
        value = value.model_dump(by_alias=True)
    if not isinstance(value, dict):
        return {prefix: value}
    out = {}
    for key, item in value.items():
        out |= flatten(item, f"{prefix}.{key}" if prefix else str(key))
    return out


class Run:
    """What a stage logs to: step metrics, final metrics, files."""

    def __init__(self, mlflow_module):
        self._mlflow = mlflow_module

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        numbers = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float))}
        self._mlflow.log_metrics(numbers, step=step)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=folder)


@contextmanager
def run(stage: str, params: dict[str, Any], name: str | None = None) -> Iterator[Run]:
    """One MLflow run around a stage invocation."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None and not uri.startswith("http"):
        # Artefacts beside the store, at an absolute path (the default is relative to the cwd).
        store = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else repo_root()
        mlflow.create_experiment(EXPERIMENT, artifact_location=(store / "mlartifacts").as_uri())
    mlflow.set_experiment(EXPERIMENT)
    tags = {"git_revision": git_revision(), "dvc_stage": stage,
            "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace")}
    with mlflow.start_run(run_name=name or stage, tags=tags):
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        yield Run(mlflow)


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """Write a DVC metrics JSON atomically (a failed stage never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
