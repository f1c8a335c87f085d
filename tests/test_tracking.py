"""pipeline.tracking: runs named and tagged by stage, the store created once under a lock, killed
runs marked, resumed runs continued, portable artefacts, and a real tracking server."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline import tracking
from tests.conftest import ROOT, repo_cfg


def test_repo_root_sees_through_a_temp_experiment(tmp_path):
    inside = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12" / "stages"
    assert tracking.repo_root(inside) == tmp_path / "repo"
    assert tracking.repo_root(tmp_path / "repo") == tmp_path / "repo"


def test_default_uri_is_absolute_sqlite(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team-server:5000")
    assert tracking.tracking_uri() == "http://team-server:5000"


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": 1, "a.c": [1, 2], "d": "x"}
    assert tracking.flatten(repo_cfg().fields)["cfg"] is False  # sections by their params.yaml keys


def _store(monkeypatch, folder: Path) -> str:
    uri = f"sqlite:///{folder}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    return client, client.search_runs([experiment.experiment_id]) if experiment else []


def test_a_stage_run_is_named_tagged_and_logs_params_metrics_and_files(monkeypatch, tmp_path):
    uri = _store(monkeypatch, tmp_path / "store")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-123")
    monkeypatch.setenv("DVC_STAGE", "train_expert@local_edit")  # what DVC sets for the command it runs
    (tmp_path / "grid.png").write_bytes(b"png")
    with tracking.run("train", repo_cfg(), recipe={"plan": {"steps": 7}}, model="local_edit") as run:
        run.log_metrics({"loss": 0.5}, step=1)
        run.log_metrics({"loss": 0.25, "note": "text is skipped"}, step=2)
        run.log_artifact(tmp_path / "grid.png", "samples.png")
    client, (found,) = _runs(uri)
    assert found.info.run_name == "train_expert@local_edit [exp-123]" and found.info.status == "FINISHED"
    tags = found.data.tags
    assert (tags["dvc.stage"], tags["dvc.exp"], tags["model"]) == ("train_expert@local_edit", "exp-123", "local_edit")
    assert found.data.params["run.plan.steps"] == "7" and found.data.params["params.fields.cfg"] == "False"
    assert len([k for k in found.data.params if k.startswith("params.")]) > 80  # the whole params.yaml
    assert [m.value for m in client.get_metric_history(found.info.run_id, "loss")] == [0.5, 0.25]
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs
    assert found.info.artifact_uri.startswith("mlflow-artifacts:/")  # portable: no absolute path
    (saved,) = (tmp_path / "store" / tracking.ARTIFACTS).rglob("samples.png")
    assert saved.read_bytes() == b"png" and found.info.run_id in saved.parts


CHILD = """
import sys
from pipeline import tracking
with tracking.run("stage", None, model=sys.argv[1]) as run:
    run.log_metrics({"x": 1.0})
"""


def test_stages_starting_together_on_a_fresh_store_all_log(monkeypatch, tmp_path):
    """Two `dvc exp run`s (or `dvc queue start -j 4`) race in MLflow's schema migration without the lock."""
    uri = _store(monkeypatch, tmp_path)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, f"m{i}"], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    errors = [p.communicate()[1] for p in procs if p.wait() != 0]
    assert not errors, errors[0]
    _, runs = _runs(uri)
    assert sorted(r.data.tags["model"] for r in runs) == ["m0", "m1", "m2", "m3"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_run_left_running_by_a_killed_process_is_marked_killed(monkeypatch, tmp_path):
    uri = _store(monkeypatch, tmp_path)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with tracking.run("stage", None, model="victim") as run:
        victim_run = run.info.run_id
    client, _ = _runs(uri)
    client.set_tag(victim_run, "pid", str(victim.pid))
    client.update_run(victim_run, "RUNNING")  # as a SIGKILLed stage leaves its run
    victim.kill()
    victim.wait()
    with tracking.run("stage", None, model="next"):
        pass
    assert client.get_run(victim_run).info.status == "KILLED"


def test_a_resumed_stage_continues_its_run(monkeypatch, tmp_path):
    uri = _store(monkeypatch, tmp_path)
    work = tmp_path / "model.partial"
    with pytest.raises(KeyboardInterrupt):
        with tracking.run("train", None, model="base", resume=work) as run:
            run.log_metrics({"loss": 1.0}, step=1)
            raise KeyboardInterrupt  # killed mid-training, its checkpoint kept
    with tracking.run("train", None, model="base", resume=work) as run:
        run.log_metrics({"loss": 0.5}, step=2)
    client, runs = _runs(uri)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [1, 2]
    with tracking.run("train", None, recipe={"other": 1}, model="base", resume=work):
        pass  # another configuration: a new run, not the old one continued
    assert len(_runs(uri)[1]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(store: Path, port: int):
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--artifacts-destination",
           str(store / tracking.ARTIFACTS), "--workers", "1"]
    # Its own process group: the server's uvicorn worker, job runner and huey consumers go with it.
    server = subprocess.Popen(cmd, cwd=store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200:
                return server
        except OSError:
            time.sleep(0.5)
    _stop(server)
    raise RuntimeError("mlflow server did not start")


def _group(pgid: int) -> list[int]:
    """The live processes of a process group (from /proc)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _stop(server) -> None:
    """Kill the server's whole process group and wait until none of it is left."""
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait()
    for _ in range(100):
        if not _group(server.pid):
            return
        time.sleep(0.1)
    raise AssertionError(f"mlflow server processes left running: {_group(server.pid)}")


def test_a_moved_store_keeps_its_images_and_a_tracking_server_takes_a_stage(monkeypatch, tmp_path):
    _store(monkeypatch, tmp_path / "here")
    (tmp_path / "grid.png").write_bytes(b"a sample grid")
    with tracking.run("evaluate", None, model="base") as run:
        run.log_artifact(tmp_path / "grid.png", "samples.png")
        run_id = run.info.run_id
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "here", moved)  # a colleague's copy of the store, at another path
    port = _free_port()
    server = _serve(moved, port)
    try:
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{url}/get-artifact?path=samples.png&run_uuid={run_id}") as response:
            assert response.read() == b"a sample grid"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # a team's tracking server
        with tracking.run("report", repo_cfg(), model="report") as run:
            run.log_artifact(tmp_path / "grid.png", "scores.png")
            served = run.info.run_id
        with urllib.request.urlopen(f"{url}/get-artifact?path=scores.png&run_uuid={served}") as response:
            assert response.read() == b"a sample grid"
        runs = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{url}/api/2.0/mlflow/runs/search", data=json.dumps({"experiment_ids": ["1"]}).encode(),
            headers={"Content-Type": "application/json"})).read())["runs"]
        assert {r["info"]["run_id"] for r in runs} == {run_id, served}
    finally:
        _stop(server)
    assert not _group(server.pid)  # nothing of the server outlives the test


def test_write_metrics_is_atomic_json(tmp_path):
    path = tmp_path / "metrics" / "m.json"
    tracking.write_metrics(path, {"fid": 1.5})
    assert json.loads(path.read_text()) == {"fid": 1.5}
    assert not list(Path(path.parent).glob("*.tmp"))
