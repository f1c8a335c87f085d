"""Experiment tracking: the only module that imports mlflow; it also writes DVC metrics JSON.

DVC is the source of truth for artefacts and final metrics; MLflow is the dashboard.

- Store: by default a SQLite file at an *absolute* path in the repository (`mlflow.db` at its
  root; under `dvc exp run --temp` a stage runs in a copy below `.dvc/tmp/exps/`, and a relative
  URI would log there and be lost). `MLFLOW_TRACKING_URI` overrides it (a team server,
  ``http://host:5000``). The store is created and migrated once, under a file lock beside it,
  before any stage logs: two stages starting together (`dvc queue start -j 2`) would otherwise
  race in MLflow's schema migration and can leave a broken database.
- Experiment "danceopd", of kind "custom model development", so the UI opens on its runs table.
- Runs: one per stage invocation, named after the DVC stage (`DVC_STAGE`, which DVC sets, e.g.
  ``evaluate_t2i_edit@danceopd-0``; plus ``[exp]`` inside `dvc exp run`). Tags: ``dvc.stage``,
  ``dvc.exp``, ``git.revision``, ``model``, ``host``, ``pid``, and ``sweep`` for an experiment
  `tools/sweep.py` named ``<sweep>_<point>`` (filter ``tags.sweep = 'query'`` in the UI).
  Params: the whole resolved params.yaml (``params.*``) and what this stage resolved for itself
  (``run.*``: a model's buckets, steps and init, a student's method), so two runs' params differ
  where they differ.
- Killed runs: a run left RUNNING by a process that is gone (same host, dead pid) is marked
  KILLED when the next stage starts. A training stage that resumes from its checkpoint resumes
  its MLflow run too (the run id is kept in the checkpoint folder), so its curves continue.
- Artefacts have the same names in every run of a kind (``samples.png``, ``train_log.json``,
  ``results.md``), so the compare view lines them up. A local store keeps them in ``mlartifacts/``
  beside ``mlflow.db``, under ``mlflow-artifacts:/`` URIs that `mlflow ui` started in that folder
  serves (its default ``--artifacts-destination ./mlartifacts``): the store and its images move or
  are shared as one folder. With a tracking server they are uploaded to it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
EXPERIMENT = "danceopd"
ARTIFACTS = "mlartifacts"  # beside the local store; `mlflow ui`'s default --artifacts-destination
RUN_FILE = "mlflow_run.json"  # in a training stage's checkpoint folder: the run to resume


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
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif hasattr(value, "model_dump"):  # a pipeline.config section
        value = value.model_dump(by_alias=True)
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    out = {}
    for key, item in value.items():
        out |= flatten(item, f"{prefix}.{key}" if prefix else str(key))
    return out


def _local_store(uri: str) -> Path | None:
    """The SQLite file of a local store, or None for a server."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing), across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(uri: str) -> str:
    """Create (and migrate) the store and the experiment once, under a lock; return the experiment id."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    store = _local_store(uri)
    with _locked(store.with_name(store.name + ".lock")) if store else contextlib.nullcontext():
        client = MlflowClient(uri)  # opening a SQLite store creates and migrates its schema
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return experiment.experiment_id
        location = f"mlflow-artifacts:/{EXPERIMENT}" if store else None  # a server picks its own
        try:
            return client.create_experiment(EXPERIMENT, artifact_location=location,
                                            tags={"mlflow.experimentKind": "custom_model_development"})
        except MlflowException:  # another process on a shared server created it first
            return client.get_experiment_by_name(EXPERIMENT).experiment_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_killed(client, experiment_id: str) -> list[str]:
    """Mark KILLED the runs left RUNNING by processes of this host that are gone; their ids."""
    running = f"attributes.status = 'RUNNING' and tags.host = '{socket.gethostname()}'"
    pids = {r.info.run_id: r.data.tags.get("pid", "") for r in client.search_runs([experiment_id], running)}
    dead = [run_id for run_id, pid in pids.items() if pid.isdigit() and not _alive(int(pid))]
    for run_id in dead:
        client.set_terminated(run_id, "KILLED")
    return dead


class Run:
    """What a stage logs to: step metrics, final metrics, files."""

    def __init__(self, mlflow_module, run_info, artifacts: Path | None):
        self._mlflow, self.info, self._artifacts = mlflow_module, run_info, artifacts  # None: a server

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        numbers = {k: float(v) for k, v in flatten(metrics).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._mlflow.log_metrics(numbers, step=step)

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        """Log the file `path` as the artefact `name` (default: its file name)."""
        path, name = Path(path), name or Path(path).name
        if self._artifacts is None:
            with contextlib.ExitStack() as stack:
                if name != path.name:  # mlflow names an artefact after its file
                    folder = Path(stack.enter_context(_tempdir()))
                    path = Path(shutil.copy(path, folder / name))
                self._mlflow.log_artifact(str(path))
            return
        # The local store's URIs are mlflow-artifacts:/<experiment>/<run>/artifacts: a path below ARTIFACTS.
        dest = self._artifacts / self.info.artifact_uri.removeprefix("mlflow-artifacts:/") / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)


def _writes() -> bool:
    """Rank 0 of a multi-process stage, or a plain process (as `pipeline.core.compute.is_main`;
    this module imports nothing from the pipeline)."""
    return int(os.environ.get("RANK", "0")) == 0


class SilentRun:
    """The run of a process that does not write (rank > 0 of a multi-process stage): logs nothing."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        pass


@contextlib.contextmanager
def _tempdir() -> Iterator[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        yield folder


def _resumable(resume: Path | None, key: str) -> str | None:
    """The MLflow run id kept in a checkpoint folder for the same invocation, if any."""
    saved = resume / RUN_FILE if resume else None
    if saved is None or not saved.is_file():
        return None
    record = json.loads(saved.read_text())
    return record["run_id"] if record.get("key") == key else None


@contextlib.contextmanager
def run(stage: str, params=None, *, recipe: dict | None = None, model: str | None = None,
        resume: Path | None = None) -> Iterator[Run]:
    """One MLflow run around a stage invocation (module docstring).

    `params`: the loaded config, logged whole; `recipe`: what this stage resolved; `model`: the
    model it trains or evaluates; `resume`: a training stage's checkpoint folder, where the run id
    is kept so that a resumed stage continues its run. Only rank 0 of a multi-process stage logs.
    """
    if not _writes():
        yield SilentRun()
        return
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    experiment_id = prepare(uri)
    client = MlflowClient(uri)
    mark_killed(client, experiment_id)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    stage = os.environ.get("DVC_STAGE") or stage
    exp = os.environ.get("DVC_EXP_NAME", "workspace")
    logged = {f"params.{k}": v for k, v in flatten(params).items()} if params is not None else {}
    logged |= {f"run.{k}": v for k, v in flatten(recipe or {}).items()}
    key = hashlib.sha256(json.dumps([stage, exp, logged], sort_keys=True, default=str).encode()).hexdigest()
    run_id = _resumable(resume, key)
    tags = {"dvc.stage": stage, "dvc.exp": exp, "git.revision": git_revision(), "host": socket.gethostname(),
            "pid": str(os.getpid())} | ({"model": model} if model else {}) | (
            {"sweep": exp.split("_", 1)[0]} if "_" in exp else {})  # tools/sweep.py's <sweep>_<point>
    name = stage if exp == "workspace" else f"{stage} [{exp}]"
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else name) as active:
        mlflow.set_tags(tags)  # also on a resumed run: its pid is this process now
        if resume is not None:
            resume.mkdir(parents=True, exist_ok=True)
            (resume / RUN_FILE).write_text(json.dumps({"run_id": active.info.run_id, "key": key}))
        if run_id is None:
            mlflow.log_params({k: str(v)[:6000] for k, v in logged.items()})
        store = _local_store(uri)
        yield Run(mlflow, active.info, store.parent / ARTIFACTS if store else None)


def history(exp: str, stage_prefix: str, keys: list[str]) -> list[dict]:
    """The logged steps of `keys` in the newest run of experiment `exp` whose stage starts with
    `stage_prefix`: [{step, key: value, ...}] (a sweep's validation curve, `pipeline.figures`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    runs = [r for r in client.search_runs([experiment.experiment_id], f"tags.`dvc.exp` = '{exp}'",
                                          order_by=["attributes.start_time DESC"])
            if r.data.tags.get("dvc.stage", "").startswith(stage_prefix)]
    if not runs:
        return []
    rows: dict[int, dict] = {}
    for key in keys:
        for m in client.get_metric_history(runs[0].info.run_id, key):
            rows.setdefault(m.step, {"step": m.step})[key] = m.value
    return [rows[s] for s in sorted(rows)]


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """Write a DVC metrics JSON atomically (a failed stage never leaves half a file); rank 0 only."""
    if not _writes():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
