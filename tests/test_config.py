import copy

import pytest
import yaml

from pipeline import config
from tests.conftest import ROOT


def _raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _write(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repo_params_load():
    cfg = config.load(ROOT / "params.yaml")
    assert cfg.fields.cfg is False
    assert set(cfg.experts) == {"local_edit", "global_edit", "edit", "realism"}
    assert cfg.experts["edit"].buckets == ["local_edit", "global_edit"]
    assert isinstance(cfg.train.lr, float)


def test_every_design_section_present():
    sections = {"world", "data", "text", "model", "train", "experts", "router", "fields",
                "routing", "distill", "eval", "compute"}
    assert set(_raw()) == sections


def test_unknown_key_is_named(tmp_path):
    raw = _raw()
    raw["distill"]["querry"] = "low"
    with pytest.raises(config.ConfigError, match=r"params.yaml: distill.querry: unknown key"):
        config.load(_write(tmp_path, raw))


def test_missing_key_is_named(tmp_path):
    raw = _raw()
    del raw["world"]["size"]
    with pytest.raises(config.ConfigError, match=r"world.size: missing key"):
        config.load(_write(tmp_path, raw))


def test_missing_section_is_named(tmp_path):
    raw = _raw()
    del raw["compute"]
    with pytest.raises(config.ConfigError, match=r"compute: missing key"):
        config.load(_write(tmp_path, raw))


@pytest.mark.parametrize("key,value,match", [
    (("world", "size"), "big", r"world.size: expected int"),
    (("fields", "cfg"), "yes", r"fields.cfg: expected bool"),
    (("world", "size"), True, r"world.size: expected int"),
    (("routing", "weights"), [1, 2], r"routing.weights: expected a mapping"),
    (("experts",), {"local_edit": {"buckets": "local_edit", "steps": 2}}, r"experts.local_edit.buckets: expected a list"),
])
def test_wrong_type_is_named(tmp_path, key, value, match):
    raw = copy.deepcopy(_raw())
    node = raw
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    with pytest.raises(config.ConfigError, match=match):
        config.load(_write(tmp_path, raw))


def test_int_accepted_for_float(tmp_path):
    raw = _raw()
    raw["fields"]["cfg_scale"] = 2  # what `dvc exp run -S fields.cfg_scale=2` writes
    assert config.load(_write(tmp_path, raw)).fields.cfg_scale == 2.0
