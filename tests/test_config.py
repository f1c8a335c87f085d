"""pipeline.config: the single validator of params.yaml (types, choices, ranges, methods, cross-checks)."""
import ast
import copy
import math
import re
import typing

import pytest
import yaml

from pipeline import config
from pipeline.core import backbone
from tests.conftest import ALL_ROWS, ROOT, repo_cfg, tiny_cfg


def _raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _write(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _set(raw, dotted, value):
    node = raw
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


def test_repo_params_load():
    cfg = config.load(ROOT / "params.yaml")
    assert cfg.fields.absorb_guidance is False  # params.yaml's `fields.cfg`
    assert set(cfg.experts) == {"local_edit", "global_edit", "edit", "realism"}
    assert cfg.experts["edit"].buckets == ["local_edit", "global_edit"]
    assert isinstance(cfg.train.base.lr, float) and cfg.train.finetune.t_sampling == "logit_normal_shifted"
    assert cfg.model.prediction == "sample" and cfg.model.patch_size == 8  # README "Teachers"


def test_every_design_section_present():
    sections = {"world", "data", "text", "model", "train", "experts", "router", "fields",
                "routing", "distill", "settings", "run", "eval", "compute"}
    assert set(_raw()) == sections


def test_unknown_key_is_named_with_the_keys_allowed_there(tmp_path):
    raw = _raw()
    raw["distill"]["querry"] = "low"
    with pytest.raises(config.ConfigError, match=r"params.yaml: distill.querry: unknown key \(expected one of .*'query'"):
        config.load(_write(tmp_path, raw))


def test_missing_key_is_named(tmp_path):
    raw = _raw()
    del raw["world"]["resolution"]
    with pytest.raises(config.ConfigError, match=r"world.resolution: missing key"):
        config.load(_write(tmp_path, raw))


@pytest.mark.parametrize("text,match", [("", r"params.yaml: empty; expected the sections world, data"),
                                        ("- a\n- b\n", r"params.yaml: not a mapping of sections")])
def test_an_empty_or_shapeless_params_file_says_so(tmp_path, text, match):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(config.ConfigError, match=match):
        config.load(tmp_path / "params.yaml")


def test_missing_section_is_named(tmp_path):
    raw = _raw()
    del raw["compute"]
    with pytest.raises(config.ConfigError, match=r"compute: missing key"):
        config.load(_write(tmp_path, raw))


@pytest.mark.parametrize("key,value,match", [
    ("world.resolution", "big", r"world.resolution: Input should be a valid integer, got 'big'"),
    ("fields.cfg", "yes", r"fields.cfg: Input should be a valid boolean, got 'yes'"),
    ("world.resolution", True, r"world.resolution: Input should be a valid integer"),
    ("train.base.lr", "fast", r"train.base.lr: Input should be a valid number"),
    ("routing.weights", [1, 2], r"routing.weights: Input should be a valid dictionary"),
    ("experts", {"local_edit": {"buckets": "local_edit", "steps": 2}}, r"experts.local_edit.buckets: Input should be a valid list"),
])
def test_wrong_type_is_named(tmp_path, key, value, match):
    with pytest.raises(config.ConfigError, match=match):
        config.load(_write(tmp_path, _set(copy.deepcopy(_raw()), key, value)))


@pytest.mark.parametrize("key,value", [  # every enum of the pipeline is checked at load, not in its stage
    ("train.base.t_sampling", "logit-normal"),
    ("train.finetune.t_sampling", "normal"),
    ("train.finetune.lr_decay", "linear"),
    ("routing.source", "lable"),
    ("routing.mode", "blend"),
    ("compute.device", "mps"),
    ("model.preset", "XXL"),
    ("distill.query", "median"),
    ("distill.weighting", "sum"),
    ("distill.states", "offline"),
    ("experts.local_edit.buckets", ["local"]),
])
def test_choices_are_checked_at_load(tmp_path, key, value):
    with pytest.raises(config.ConfigError, match=rf"params.yaml: {re.escape(key)}(\[0\])?: Input should be"):
        config.load(_write(tmp_path, _set(_raw(), key, value)))


@pytest.mark.parametrize("key,value", [
    ("train.base.steps", -5), ("train.checkpoint_every", 0), ("train.log_every", 0), ("train.batch_size", 0),
    ("train.grad_accum", 0), ("train.base.lr", 0.0), ("train.drop_text", 1.5), ("train.finetune.ema", 1.0),
    ("train.base.min_lr_ratio", 1.5),
    ("distill.rollout_steps", 0), ("eval.count", 0), ("router.label_fraction", 0.0), ("compute.threads", -1),
    ("model.lora_rank", -1),
])
def test_numbers_out_of_range_are_named(tmp_path, key, value):
    with pytest.raises(config.ConfigError, match=rf"params.yaml: {re.escape(key)}: Input should be"):
        config.load(_write(tmp_path, _set(_raw(), key, value)))


@pytest.mark.parametrize("key,value", [("train.base.lr", math.inf), ("eval.guidance", math.inf),
                                       ("fields.cfg_scale", math.nan), ("routing.weights.t2i", math.inf),
                                       ("train.grad_clip", math.nan)])
def test_nan_and_infinite_numbers_are_named(tmp_path, key, value):
    """`-S train.base.lr=inf` passed every positive-float check; YAML 1.2 reads .inf and .nan as numbers."""
    with pytest.raises(config.ConfigError, match=rf"params.yaml: {re.escape(key)}: Input should be a finite number"):
        config.load(_write(tmp_path, _set(_raw(), key, value)))


@pytest.mark.parametrize("key,value,match", [
    ("model.patch_size", 3, r"model.patch_size: 3 does not divide world.resolution 32"),
    ("text.encoder", "minlm", r"text.encoder: 'minlm' is neither 'minilm', 'pretrained' nor a local"),
])
def test_values_that_would_fail_in_their_stage_fail_at_load(tmp_path, key, value, match):
    with pytest.raises(config.ConfigError, match=match):
        config.load(_write(tmp_path, _set(_raw(), key, value)))


def test_eval_count_is_bounded_by_the_curated_test_samples(tmp_path):
    raw = _set(_raw(), "eval.count", 5000)
    with pytest.raises(config.ConfigError, match=r"eval.count: 5000 test samples a bucket, but data.test_per_bucket "
                                                 r"curates 240"):
        config.load(_write(tmp_path, raw))


def test_every_problem_is_listed_at_once(tmp_path):
    raw = _set(_set(_raw(), "compute.device", "mps"), "world.resolution", "big")
    with pytest.raises(config.ConfigError, match=r"2 problems") as err:
        config.load(_write(tmp_path, raw))
    assert "compute.device" in str(err.value) and "world.resolution" in str(err.value)


def test_params_are_read_as_yaml_1_2_like_dvc(tmp_path):
    """`-S fields.cfg=yes` must not silently turn CFG absorption on (YAML 1.1's yes = true)."""
    text = (ROOT / "params.yaml").read_text()
    assert "  cfg: false" in text and "    lr: 2.0e-3" in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("    lr: 2.0e-3", "    lr: 1e-3"))  # YAML 1.2: a number
    assert config.load(path).train.base.lr == 1e-3
    for word in ("yes", "on", "Y"):
        path.write_text(text.replace("  cfg: false", f"  cfg: {word}"))
        with pytest.raises(config.ConfigError, match=rf"fields.cfg: Input should be a valid boolean, got '{word}'"):
            config.load(path)


def test_int_accepted_for_float(tmp_path):
    raw = _raw()
    raw["fields"]["cfg_scale"] = 2  # what `dvc exp run -S fields.cfg_scale=2` writes
    assert config.load(_write(tmp_path, raw)).fields.guidance_scale == 2.0


@pytest.mark.parametrize("key,value,where", [
    ("settings.t2i_edit.routes.t2i", "bas", r"settings.t2i_edit.routes.t2i: 'bas' is not a source model"),
    ("settings.realism.init", "merge", r"settings.realism.init: 'merge' is not a source model"),
    ("settings.local_global.methods", ["danceopd", "dense"], r"settings.local_global.methods: \['dense'\] not in"),
    ("settings.diagnostic.seeds", [0, 0], r"settings.diagnostic.seeds: \[0, 0\] repeats a seed"),
    ("routing.weights", {"t2i": 1.0, "local_edit": 1.0, "global_edit": 1.0},
     r"routing.weights.edit: missing weight for route 'edit' of settings.t2i_edit"),
    ("routing.weights", {"t2i": 1.0, "edit": 1.0, "local_edit": 0.0, "global_edit": 0.0},
     r"routing.weights: every route of settings.local_global has weight 0"),
    ("text.encoder", "pretrained", r"params.yaml: text.encoder: 'pretrained' means the text encoders of model.pretrained"),
    ("model.lora_rank", 4, r"params.yaml: model.lora_rank: 4 trains LoRA adapters on a pretrained base, but "
                           r"model.pretrained is empty"),
])
def test_cross_section_rules(tmp_path, key, value, where):
    with pytest.raises(config.ConfigError, match=where):
        config.load(_write(tmp_path, _set(_raw(), key, value)))


def test_a_route_must_be_one_the_registry_knows(tmp_path):
    raw = _set(_raw(), "settings.realism.routes", {"realism": "realism"})
    with pytest.raises(config.ConfigError, match=r"settings.realism.routes.realism: Input should be 't2i', 'edit'"):
        config.load(_write(tmp_path, raw))


def test_model_presets_and_query_positions_are_their_owners_registries():
    """config may import only the data layer, so these two names are spelled in its schema too and pinned
    here; the route names come from the world's registry itself (`world.ROUTE_BUCKETS`)."""
    from pipeline.core import teacher
    from pipeline.data import world
    from pipeline.train import distill

    assert set(typing.get_args(config.ModelPreset)) == set(backbone.PRESETS)
    assert set(typing.get_args(config.Query)) == set(distill.QUERY_BETA)
    assert typing.get_args(config.RouteName) == tuple(world.ROUTE_BUCKETS) and teacher.ROUTE_BUCKETS is world.ROUTE_BUCKETS


# --- distill.methods resolved at load, per setting -------------------------------------------------


def test_methods_are_resolved_with_defaults_overrides_and_the_setting_init():
    cfg = repo_cfg(**ALL_ROWS)
    base = cfg.method("local_global", "danceopd")
    assert (base.query, base.queries, base.states, base.routing_mode, base.routing_per) == (
        "low", 1, "on_policy", "hard", "step")
    assert base.rollout_steps == cfg.distill.rollout_steps and base.lr == cfg.distill.lr
    assert base.init == "local_edit" and cfg.method("t2i_edit", "danceopd").init == "edit"  # the setting's init
    dopd = cfg.method("t2i_edit", "diffusionopd")  # params.yaml: all R states, 0.5/R^2, every route each step
    assert (dopd.queries, dopd.query, dopd.weighting, dopd.routing_per) == (16, "uniform", "diffusionopd", "all")
    assert cfg.method("diagnostic", "soft").routing_mode == "soft"
    assert cfg.method("diagnostic", "per_sample").routing_per == "sample"
    assert cfg.method("local_global", "offpolicy").states == "off_policy"
    mid = repo_cfg(distill={"query": "mid"})  # `-S distill.query=mid` reaches every non-overriding method
    assert mid.method("t2i_edit", "danceopd").query == "mid"
    assert mid.method("t2i_edit", "diffusionopd").query == "uniform"
    assert repo_cfg(routing={"mode": "soft"}).method("t2i_edit", "danceopd").routing_mode == "soft"


@pytest.mark.parametrize("overrides,where", [
    ({"querys": 2}, r"distill.methods.bad.querys: unknown key"),
    ({"query": "lowest"}, r"distill.methods.bad.query: Input should be"),
    ({"queries": 0}, r"distill.methods.bad.queries: Input should be greater than 0"),
    ({"queries": 17}, r"distill.methods.bad.queries: 17 queries but only 16 rollout states \(distill.rollout_steps\)"),
    ({"weighting": "sum"}, r"distill.methods.bad.weighting: Input should be"),
    ({"states": "offline"}, r"distill.methods.bad.states: Input should be"),
    ({"routing_mode": "mixed"}, r"distill.methods.bad.routing_mode: Input should be"),
    ({"routing_per": "batch"}, r"distill.methods.bad.routing_per: Input should be"),
    ({"lr": "fast"}, r"distill.methods.bad.lr: Input should be a valid number"),
    ({"init": "joint"}, r"distill.methods.bad.init: 'joint' is not a source model"),
])
def test_a_bad_method_override_is_named(overrides, where):
    with pytest.raises(config.ConfigError, match=where):
        repo_cfg(distill={"methods": {"bad": overrides}}, settings={"diagnostic": {"methods": ["danceopd", "bad"]}},
                 run=ALL_ROWS["run"])


def test_a_method_no_setting_runs_is_checked_too():
    """`queries` above the rollout's states fails at load even for a method that no setting runs yet
    (it would otherwise fail only the day a `-S settings.<s>.methods=[...]` picks it)."""
    with pytest.raises(config.ConfigError, match=r"distill.methods.later.queries: 40 queries but only 16 rollout "
                                                 r"states \(distill.rollout_steps\)"):
        repo_cfg(distill={"methods": {"later": {"queries": 40}}})
    with pytest.raises(config.ConfigError, match=r"distill.queries: 8 queries but only 4 rollout states "
                                                 r"\(distill.methods.later.rollout_steps\)"):
        repo_cfg(distill={"queries": 8, "methods": {"later": {"rollout_steps": 4}}})
    assert repo_cfg(distill={"methods": {"later": {"queries": "all"}}})  # every state: always fits


def test_a_method_the_setting_does_not_run_is_named():
    with pytest.raises(config.ConfigError, match=r"settings.realism.methods: no method 'soft'"):
        repo_cfg().method("realism", "soft")


# --- tracing what a process reads ----------------------------------------------------------------


def test_reads_are_traced_by_their_params_yaml_key(monkeypatch):
    cfg = repo_cfg()
    monkeypatch.setattr(config.trace, "reads", set())
    cfg.train.base.lr, cfg.fields.absorb_guidance, cfg.experts["edit"].steps, cfg.routing.weights
    dopd = cfg.method("t2i_edit", "diffusionopd")
    dopd.queries, dopd.rollout_steps, dopd.routing_mode
    assert config.trace.reads == {"train.base.lr", "fields.cfg", "experts.edit.steps", "routing.weights",
                            "distill.methods.diffusionopd.queries", "distill.rollout_steps", "routing.mode"}
    list(cfg.experts)  # the set of expert names is the whole section
    assert "experts" in config.trace.reads


def test_no_code_spells_the_guidance_knobs_cfg():
    """`fields.cfg` / `cfg_scale` are params.yaml's spellings only; code says absorb_guidance / guidance_scale."""
    offenders = []
    for path in [*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("stages/*.py"), *ROOT.glob("benchmarks/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("cfg", "cfg_scale"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
    with pytest.raises(AttributeError):
        repo_cfg().fields.cfg  # noqa: B018


def test_run_rows_name_the_experts_they_need():
    """A setting that runs (students, baselines or teachers) needs its experts in run.experts."""
    from pipeline import config

    with pytest.raises(config.ConfigError, match=r"run.experts: \['local_edit', 'global_edit'\].*settings.local_global"):
        tiny_cfg(run={"experts": ["edit", "realism"], "baselines": ["t2i_edit"], "teachers": []})
    with pytest.raises(config.ConfigError, match=r"run.baselines: \['t2i'\] are not settings"):
        tiny_cfg(run={"baselines": ["t2i"]})
    with pytest.raises(config.ConfigError, match=r"run.experts: \['edits'\] are not experts"):
        tiny_cfg(run={"experts": ["edits", "local_edit", "global_edit", "edit", "realism"]})


def test_a_setting_with_no_methods_trains_no_student():
    cfg = tiny_cfg(run={"experts": ["edit", "realism"], "baselines": ["t2i_edit"], "teachers": ["t2i_edit"]},
                   settings={"local_global": {"methods": []}, "diagnostic": {"methods": []}})
    assert cfg.settings["local_global"].methods == []
