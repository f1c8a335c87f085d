"""Strict, typed loader of params.yaml.

Each section of params.yaml is a dataclass below; `load()` returns a `Config` holding one of each.
An unknown key, a missing key or a value of the wrong type is a `ConfigError` naming the file and
the dotted key (``params.yaml: distill.query: ...``), so a typo in `dvc exp run -S` fails at once
instead of silently running the default. Defaults live in params.yaml only: no field here has one.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml


class ConfigError(ValueError):
    """A params file that does not match the schema."""


@dataclasses.dataclass(frozen=True)
class World:
    size: int  # canvas side in pixels; the 2x2 grid of cells scales with it


@dataclasses.dataclass(frozen=True)
class Data:
    train_per_bucket: int  # samples per bucket (t2i, local_edit, global_edit, realism) and split
    test_per_bucket: int
    shard_size: int  # samples per webdataset shard
    external_csv: str  # "" = none; else a CSV (uid,task,prompt,source_image,target_image)
    external_test_fraction: float  # share of external rows (by hash of uid) that go to test


@dataclasses.dataclass(frozen=True)
class Text:
    encoder: str  # "minilm" = the packaged all-MiniLM-L6-v2, or a local transformers folder
    max_tokens: int  # token embeddings are padded/truncated to this length
    batch_size: int


@dataclasses.dataclass(frozen=True)
class Model:
    size: str  # a name from backbone.SIZES
    patch_size: int
    shift: float  # SD3 time shift of the sampling grid
    pretrained: str  # "" = build from `size`; else a local diffusers transformer folder


@dataclasses.dataclass(frozen=True)
class Train:
    batch_size: int
    lr: float
    weight_decay: float
    grad_clip: float
    ema: float  # EMA decay; 0 = off
    base_steps: int
    joint_steps: int
    t_sampling: str  # logit_normal | uniform: the base, trained from scratch
    finetune_t_sampling: str  # the same, for the models fine-tuned from base (experts, joint)
    drop_text: float  # condition dropout probabilities (for CFG)
    drop_source: float
    checkpoint_every: int
    log_every: int
    seed: int


@dataclasses.dataclass(frozen=True)
class Expert:
    buckets: list[str]  # the buckets it is fine-tuned on
    steps: int  # its fine-tuning budget (edits need ~1500 steps at batch 64; realism ~400)


@dataclasses.dataclass(frozen=True)
class Router:
    label_fraction: float  # share of training prompts whose task label the router may see
    steps: int
    lr: float
    seed: int  # which prompts are labelled, and the router's initial weights


@dataclasses.dataclass(frozen=True)
class Fields:
    t2i: str  # model names: "base", an expert name, or "" for none
    local_edit: str
    global_edit: str
    realism: str
    cfg: bool  # teacher target = guided field at cfg_scale (CFG absorption)
    cfg_scale: float


@dataclasses.dataclass(frozen=True)
class Routing:
    mode: str  # hard | soft
    source: str  # router | label
    weights: dict[str, float]  # per bucket


@dataclasses.dataclass(frozen=True)
class Distill:
    init: str  # local_edit | base | any model name
    rollout_steps: int
    query: str  # low | mid | high | uniform
    queries: int  # K states per rollout
    weighting: str  # mean | diffusionopd
    states: str  # on_policy | off_policy
    steps: int
    batch_size: int
    lr: float
    methods: dict[str, dict[str, Any]]  # method name -> overrides of the keys above


@dataclasses.dataclass(frozen=True)
class Evaluator:
    parser_steps: int  # scene-parser training steps on fresh renders
    clip_steps: int  # domain-CLIP contrastive training steps
    batch_size: int
    lr: float
    holdout: int  # held-out renders that measure scene_accuracy
    seed: int
    min_scene_accuracy: float  # held-out scene accuracy below which the stage fails (DESIGN §7)


@dataclasses.dataclass(frozen=True)
class Eval:
    count: int  # test samples per bucket
    steps: int  # Euler steps
    guidance: float  # CFG scale at sampling time
    seed: int
    evaluator: Evaluator


@dataclasses.dataclass(frozen=True)
class Compute:
    device: str  # auto | cpu | cuda
    threads: int  # torch intra-op threads; 0 = torch's default
    compile: bool


@dataclasses.dataclass(frozen=True)
class Config:
    world: World
    data: Data
    text: Text
    model: Model
    train: Train
    experts: dict[str, Expert]
    router: Router
    fields: Fields
    routing: Routing
    distill: Distill
    eval: Eval
    compute: Compute


def load(path: str | Path = "params.yaml") -> Config:
    """Read and validate a params file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from err
    return build(Config, raw, f"{path}: ")


def build(cls: Any, value: Any, where: str) -> Any:
    """Convert `value` to type `cls`, naming `where` (a dotted key) in any error."""
    origin = typing.get_origin(cls)
    if dataclasses.is_dataclass(cls):
        return _build_dataclass(cls, value, where)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(cls):
            try:
                return build(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[-1])
    if origin is list:
        (item,) = typing.get_args(cls)
        _expect(isinstance(value, list), where, "a list", value)
        return [build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_t, val_t = typing.get_args(cls)
        _expect(isinstance(value, dict), where, "a mapping", value)
        return {build(key_t, k, where): build(val_t, v, f"{where}.{k}") for k, v in value.items()}
    return _build_scalar(cls, value, where)


def _build_dataclass(cls: Any, value: Any, where: str) -> Any:
    _expect(isinstance(value, dict), where.rstrip("."), "a mapping", value)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = where if where.endswith(": ") else where + "."
    unknown = sorted(set(value) - set(names))
    missing = [n for n in names if n not in value]
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (expected one of {names})")
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}: missing key")
    return cls(**{n: build(hints[n], value[n], prefix + n) for n in names})


def _build_scalar(cls: Any, value: Any, where: str) -> Any:
    if cls is Any:
        return value
    if cls is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # YAML writes 1.0 as 1 after `dvc exp run -S x=1`
    ok = isinstance(value, cls) and not (cls is int and isinstance(value, bool))
    _expect(ok, where, cls.__name__, value)
    return value


def _expect(ok: bool, where: str, what: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
