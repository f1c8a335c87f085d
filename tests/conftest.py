"""Shared fixtures: the repo root, a tiny config, and the offline environment."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long end-to-end runs (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one; benchmarks/gpu_check.sh runs them)")


@pytest.fixture(scope="session")
def encoder():
    """The real frozen text encoder (loads in ~2 s; shared by the session)."""
    from pipeline.curation.text import TextEncoder

    return TextEncoder("minilm", max_tokens=24, batch_size=64)


@pytest.fixture(scope="session")
def curated(tmp_path_factory, encoder):
    """The tiny config's curated shards and their embeddings, as the stages open them."""
    from pipeline.core.batches import Curated
    from pipeline.curation import curate
    from pipeline.data import embeddings

    cfg = tiny_cfg()
    out = tmp_path_factory.mktemp("curated")
    manifest = curate.curate(cfg.world, cfg.data, out / "shards", out / "manifest.parquet")
    info = {"encoder": cfg.text.encoder, "max_tokens": cfg.text.max_tokens}
    embeddings.write(manifest["prompt"].tolist(), encoder, out / "embeddings", info)
    return Curated.open(out / "shards", out / "embeddings")


TINY = {  # a config small enough for a stage to run in seconds
    "data": {"train_per_bucket": 12, "test_per_bucket": 6, "shard_size": 8},
    "model": {"preset": "tiny"},
    "train": {"batch_size": 4, "checkpoint_every": 2, "log_every": 1, "base": {"steps": 4}},
    "eval": {"count": 6, "steps": 2, "evaluator": {"parser_steps": 2, "clip_steps": 2, "batch_size": 8, "holdout": 40,
                                                   "reference": 200, "min_scene_accuracy": 0.0}},
    "router": {"steps": 20, "label_fraction": 0.5},
    "distill": {"rollout_steps": 4, "steps": 2, "batch_size": 2},
    "experts": {name: {"buckets": buckets, "steps": 2} for name, buckets in (
        ("local_edit", ["local_edit"]), ("global_edit", ["global_edit"]), ("edit", ["local_edit", "global_edit"]),
        ("realism", ["realism"]))},
    # Every setting, with few methods: the others are the same code paths, unit-tested.
    "run": {"experts": ["local_edit", "global_edit", "edit", "realism"], "baselines": ["t2i_edit", "local_global"],
            "teachers": ["t2i_edit", "local_global", "diagnostic"]},
    "settings": {"t2i_edit": {"methods": ["danceopd", "diffusionopd"], "seeds": [0]},
                 "local_global": {"methods": ["offpolicy"]}, "diagnostic": {"methods": ["soft"]},
                 "realism": {"methods": ["danceopd"], "seeds": [0, 1]}},  # two seeds: a level of the bootstrap
}


# The rows the default params leave out (`run`, empty method lists), all on: for tests of every setting.
ALL_ROWS = {
    "run": TINY["run"],
    "settings": {"local_global": {"methods": ["danceopd", "diffusionopd", "offpolicy"]},
                 "diagnostic": {"methods": ["danceopd", "soft", "per_sample", "query_mid", "query_high", "k4"]}},
}


def _merged(base: dict, update: dict) -> dict:
    """`base` with `update` applied, nested mappings merged key by key."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_raw(_base: dict | None = TINY, **sections) -> dict:
    """params.yaml with the TINY overrides and then `sections` applied (nested keys merged)."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, values in ((_base or {}) | sections).items():
        raw[name] = values if name == "experts" else _merged(raw[name], values)
    return raw


def tiny_cfg(**sections):
    from pipeline import config

    return config.parse(tiny_raw(**sections), "tiny")


def repo_cfg(**sections):
    """The repository's params.yaml with `sections` applied (no TINY sizes)."""
    from pipeline import config

    return config.parse(tiny_raw(None, **sections), "params.yaml")
