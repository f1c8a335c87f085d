import json
from pathlib import Path

from pipeline import tracking


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


def test_a_stage_run_is_logged_with_tags_params_metrics_and_files(monkeypatch, tmp_path):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-123")
    (tmp_path / "grid.png").write_bytes(b"png")
    with tracking.run("train_base", {"train": {"lr": 0.001}}, name="base") as run:
        run.log_metrics({"loss": 0.5}, step=1)
        run.log_metrics({"loss": 0.25}, step=2)
        run.log_artifact(tmp_path / "grid.png")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    (found,) = mlflow.search_runs(experiment_names=[tracking.EXPERIMENT], output_format="list")
    assert found.data.tags["dvc_stage"] == "train_base" and found.data.tags["dvc_exp_name"] == "exp-123"
    assert found.data.params == {"train.lr": "0.001"} and found.data.metrics["loss"] == 0.25
    history = mlflow.MlflowClient().get_metric_history(found.info.run_id, "loss")
    assert [m.value for m in history] == [0.5, 0.25]
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(found.info.run_id)] == ["grid.png"]
    assert list((tmp_path / "mlartifacts").rglob("grid.png"))  # beside the store, not in the cwd


def test_write_metrics_is_atomic_json(tmp_path):
    path = tmp_path / "metrics" / "m.json"
    tracking.write_metrics(path, {"fid": 1.5})
    assert json.loads(path.read_text()) == {"fid": 1.5}
    assert not list(Path(path.parent).glob("*.tmp"))
