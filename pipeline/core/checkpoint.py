"""Checkpoints on disk: finished model folders, and the training state a killed stage resumes from.

A model folder is the backbone's diffusers folder (config.json + safetensors) plus `train_log.json`:
what produced it (its name, init and the resolved params its training read) and its loss history.
Nothing in it is a timing or an absolute path, so it is a pure function of params, data and seed:
an identical retrain writes identical bytes and DVC reruns nothing downstream. Timings go to
MLflow and to the stage's metrics file instead. A folder is written under a temporary name and
renamed into place, so a failed stage never leaves a half-written model.

Training state lives in ``<out>.partial/`` beside the output (DVC deletes a stage's outputs, not
their siblings, before running it): one `STATE` file written atomically, tagged with the run's
fingerprint so that it only ever resumes the run it came from.

Paths belong to dvc.yaml: a stage receives the base folder and the experts' root, and
`source_folders` maps source-model names (params ``fields.*``, ``distill.init``) to folders.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from pipeline.data.shards import replace_dir

LOG = "train_log.json"
STATE = "checkpoint.pt"


def save_model(model, out: Path, log: dict) -> None:
    """Write the model folder atomically: weights + config (diffusers) and `LOG`."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    (tmp / LOG).write_text(json.dumps(log, indent=1, sort_keys=True) + "\n")
    replace_dir(tmp, out)


def source_folders(base: Path, experts: Path, names) -> dict[str, Path]:
    """The folders of the source models `names`: ``base``, or an expert's folder under the experts' root."""
    return {name: Path(base) if name == "base" else Path(experts) / name for name in sorted(set(names))}


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able run inputs; a training state only resumes the run it came from."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def work_dir(out: Path) -> Path:
    """Where a stage keeps its training state: beside its output."""
    return out.with_name(out.name + ".partial")


def finish(work: Path) -> None:
    """Drop the training state once the final output is in place."""
    shutil.rmtree(work, ignore_errors=True)


def save_state(work: Path, run_id: str, state: dict) -> None:
    """Write the training state atomically (a kill mid-save leaves the previous one)."""
    path = work / STATE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"run_id": run_id} | state, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def load_state(work: Path, run_id: str) -> dict | None:
    """The saved training state of run `run_id`, or None when there is none (or it is another run's)."""
    path = work / STATE
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.pop("run_id") != run_id:
        print(f"{path}: from another configuration; starting afresh")
        return None
    return state
