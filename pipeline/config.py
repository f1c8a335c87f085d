"""Strict, typed loader of params.yaml: the single validator of every parameter.

Each section of params.yaml is a pydantic model below; `load()` returns a `Config` holding one of
each. The file is read as YAML 1.2, as DVC reads it, so ``-S fields.cfg=yes`` is the string "yes"
(an error), not YAML 1.1's true, and ``1e-3`` is a number. Everything is checked once, at load,
before a stage does any work: an unknown or missing
key, a value of the wrong type (no coercion: ``"2"`` is not an int), an enum value outside its
choices, a number out of range, and the cross-section rules in `_check` (a field or init that
names no source model, a method whose K exceeds R, a route without a weight). A `ConfigError`
lists every problem, each naming the file and the dotted key (``params.yaml: distill.query:
...``), so a typo in `dvc exp run -S` fails at once instead of silently running the default.
Defaults live in params.yaml only: no field here has one.

Names: Python attributes spell the guidance knobs ``fields.absorb_guidance`` and
``fields.guidance_scale``; their params.yaml keys stay ``fields.cfg`` and ``fields.cfg_scale``
(the model card's interface: ``dvc exp run -S fields.cfg=true``).

Settings: ``settings.<name>`` is one of the paper's experiments (its routes, the students' init,
its methods and seeds). Methods: ``distill.methods.<name>`` holds overrides of the ``distill``
keys (and of ``routing.mode``/``per`` as ``routing_mode``/``routing_per``, and of the setting's
``init``); they are resolved here, per setting, into complete `Method`s (`Config.method`), so no
other module validates a choice.

Tracing: with ``DANCEOPD_PARAMS_TRACE=<dir>`` in the environment, each process records the
dotted params keys its code reads (a resolved method's value counts as a read of the key it came
from) and writes them to ``<dir>`` at exit. The tests run the tiny pipeline that way and check
each stage's ``params:`` in dvc.yaml against what its code read.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from ruamel.yaml import YAML, YAMLError

from pipeline.data import world

TRACE_ENV = "DANCEOPD_PARAMS_TRACE"
_read: set[str] | None = None  # the keys read in this process, while tracing

Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
# The buckets of curated data: the world's, and "external" (pipeline.data.external's ingest).
Bucket = Literal[world.BUCKETS + ("external",)]
ModelPreset = Literal["tiny", "S", "S-deep", "S-wide", "M", "B"]  # pipeline.core.backbone.PRESETS (a test keeps them equal)
# The training t density; "_shifted": moved by model.shift like the sampling grid, so training
# spends its samples where sampling spends its steps (more near noise, where layout is decided).
TSampling = Literal["logit_normal", "uniform", "logit_normal_shifted", "uniform_shifted"]
Query = Literal["low", "mid", "high", "uniform"]
Weighting = Literal["mean", "diffusionopd"]
States = Literal["on_policy", "off_policy", "off_policy_data"]
RoutingMode = Literal["hard", "soft"]
RoutingPer = Literal["step", "sample", "all"]
RouteName = Literal["t2i", "edit", "local_edit", "global_edit"]  # pipeline.core.teacher.ROUTE_BUCKETS


class ConfigError(ValueError):
    """A params file that does not match the schema."""


class Section(BaseModel):
    """A params section: strict, frozen, no unknown keys, no NaN or infinite number; records reads while tracing."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
    _where: str = PrivateAttr(default="")  # this section's dotted key
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)  # field -> the key it came from

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if _read is None or name.startswith("_") or name not in type(self).model_fields:
            return value
        key = type(self).model_fields[name].alias or name  # the params.yaml spelling
        where = self._origins.get(name) or (f"{self._where}.{key}" if self._where else key)
        if isinstance(value, Section):
            return value  # it records its own leaves
        if isinstance(value, dict) and value and all(isinstance(v, Section) for v in value.values()):
            return _TracedSections(value, where)
        _read.add(where)
        return value


class _TracedSections(dict):
    """A name -> section mapping that records the whole key when its set of names is read."""

    def __init__(self, items: dict, where: str):
        super().__init__(items)
        self._where = where

    def _all(self) -> None:
        _read.add(self._where)

    def __iter__(self):
        self._all()
        return super().__iter__()

    def __len__(self) -> int:
        self._all()
        return super().__len__()

    def __contains__(self, key) -> bool:
        self._all()
        return super().__contains__(key)

    def keys(self):
        self._all()
        return super().keys()

    def items(self):
        self._all()
        return super().items()

    def values(self):
        self._all()
        return super().values()


class World(Section):
    resolution: Positive  # canvas side in pixels; the 2x2 grid of cells scales with it


class Stream(Section):
    """How training reads its data (`pipeline.core.streams`)."""

    enabled: bool  # false: in memory, on the device (the small world); true: streamed from the shards
    workers: NonNegative  # DataLoader workers per process
    buffer: Positive  # shuffle buffer, in samples


class Data(Section):
    train_per_bucket: Positive  # samples per bucket (t2i, local_edit, global_edit, realism) and split
    test_per_bucket: Positive
    shard_size: Positive  # samples per webdataset shard
    external_csv: str  # "" = none; else a CSV (uid,task,prompt,source_image,target_image)
    external_test_fraction: Probability  # share of external rows (by hash of uid) that go to test
    stream: Stream


class Text(Section):
    encoder: str  # "minilm" = the packaged all-MiniLM-L6-v2; "pretrained" = the SD3 text encoders of
    # model.pretrained's folder (pipeline.data.sd3_text); or a local transformers folder
    max_tokens: Positive  # token embeddings are padded/truncated to this length (SD3: T5's, after 77 CLIP tokens)
    batch_size: Positive


class Model(Section):
    preset: ModelPreset  # a backbone depth/width from the registry
    patch_size: Positive
    prediction: Literal["velocity", "sample"]  # what the network predicts (pipeline.core.backbone); the
    # model returns a velocity either way. A pretrained SD3 model predicts the velocity.
    shift: PositiveFloat  # SD3 time shift of the sampling grid
    pretrained: str  # "" = build from `preset`; else a local diffusers folder: an SD3-family pipeline
    # (its transformer; its VAE's latents when it has a vae/) or a bare transformer folder
    lora_rank: NonNegative  # 0 = full fine-tuning; > 0: the SFT models and students train LoRA adapters of
    # this rank (alpha = rank) on the frozen pretrained weights, and are saved merged


class Recipe(Section):
    """How one kind of SFT model is optimised (the base from scratch; the fine-tunes from base)."""

    lr: PositiveFloat
    warmup_steps: NonNegative  # linear learning-rate warm-up
    lr_decay: Literal["constant", "cosine"]  # after the warm-up
    min_lr_ratio: Probability  # cosine: the final learning rate, as a share of lr
    ema: Annotated[float, Field(ge=0, lt=1)]  # EMA decay (with diffusers' warm-up); 0 = off
    t_sampling: TSampling


class BaseRecipe(Recipe):
    steps: Positive


class Train(Section):
    batch_size: Positive
    grad_accum: Positive  # micro-batches of batch_size per optimizer step
    weight_decay: Annotated[float, Field(ge=0)]
    grad_clip: PositiveFloat
    drop_text: Probability  # condition dropout probabilities (for CFG)
    drop_source: Probability
    checkpoint_every: Positive
    log_every: Positive
    seed: int
    base: BaseRecipe  # the T2I base, from scratch
    finetune: Recipe  # the experts and joint, from base


class Expert(Section):
    buckets: Annotated[list[Bucket], Field(min_length=1)]  # the buckets it is fine-tuned on
    steps: Positive  # its fine-tuning budget (edits need ~1500 steps at batch 64; realism ~400)


class Router(Section):
    label_fraction: Annotated[float, Field(gt=0, le=1)]  # share of training prompts whose label it sees
    steps: Positive
    lr: PositiveFloat
    seed: int  # which prompts are labelled, and the router's initial weights


class Fields(Section):
    """The operators on the routed field the students learn."""

    absorb_guidance: bool = Field(alias="cfg")  # teacher target = guided field (CFG absorption)
    guidance_scale: PositiveFloat = Field(alias="cfg_scale")


class Routing(Section):
    mode: RoutingMode  # hard: one field per sample; soft: the weighted average of the setting's fields
    source: Literal["router", "label"]  # the router's prediction, or the true task
    per: RoutingPer  # step: one route per optimizer step; sample: mixed in a batch; all: every route each step
    weights: dict[RouteName, Annotated[float, Field(ge=0)]]  # route sampling (and soft-average) weights


class Setting(Section):
    """One experiment of the paper: its routes (route -> source model), the students' init, the
    methods it runs and the seeds each student is trained with."""

    routes: Annotated[dict[RouteName, str], Field(min_length=1)]
    init: str
    methods: list[str]  # empty: the setting's students are not trained (DVC expands no stage)
    seeds: Annotated[list[int], Field(min_length=1)]


class Run(Section):
    """Which of the costlier rows `dvc repro` trains and evaluates (each list drives a DVC ``foreach``
    or ``matrix``; a row left out costs nothing and is one ``-S`` away)."""

    experts: list[str]  # the experts trained (of ``experts``)
    baselines: list[str]  # settings whose joint-SFT and weight-merge baselines run
    teachers: list[str]  # settings whose routed teachers (plain and guided) are evaluated


class MethodOverrides(Section):
    """What ``distill.methods.<name>`` may override (every key optional)."""

    init: str | None = None  # default: the setting's
    rollout_steps: Positive | None = None
    query: Query | None = None
    queries: Positive | Literal["all"] | None = None  # "all": every rollout state (DiffusionOPD)
    weighting: Weighting | None = None
    states: States | None = None
    routing_mode: RoutingMode | None = None
    routing_per: RoutingPer | None = None
    steps: Positive | None = None
    batch_size: Positive | None = None
    grad_accum: Positive | None = None
    lr: PositiveFloat | None = None


class Distill(Section):
    rollout_steps: Positive  # R: Euler steps of the student rollout (= query candidates)
    query: Query  # low: Beta(5,2) over rollout indices; mid: Beta(5,5); high: Beta(2,5); uniform
    queries: Positive  # K states per rollout
    weighting: Weighting  # K>1: mean of the K losses, or diffusionopd: 0.5/R^2 * their sum
    states: States  # on_policy | off_policy (forward-noised at the query t: edit targets, Gaussian
    # endpoints for prompt-only rows) | off_policy_data (every row's render)
    steps: Positive
    batch_size: Positive
    grad_accum: Positive
    lr: PositiveFloat
    methods: dict[str, MethodOverrides | None]  # method name -> overrides of the keys above


class Method(Section):
    """One distillation recipe, resolved: the ``distill`` keys, ``routing.mode`` and ``routing.per``
    and the setting's init, with the method's overrides."""

    init: str
    rollout_steps: Positive
    query: Query
    queries: Positive
    weighting: Weighting
    states: States
    routing_mode: RoutingMode
    routing_per: RoutingPer
    steps: Positive
    batch_size: Positive
    grad_accum: Positive
    lr: PositiveFloat


class Evaluator(Section):
    parser_steps: Positive  # scene-parser training steps on fresh renders
    clip_steps: Positive  # domain-CLIP contrastive training steps
    batch_size: Positive
    lr: PositiveFloat
    holdout: Positive  # held-out renders that measure scene_accuracy
    reference: Positive  # real T2I test renders whose features are KID's and FID's reference
    seed: int
    min_scene_accuracy: Probability  # held-out scene accuracy below which the stage fails (DESIGN §7)


class Eval(Section):
    count: Positive  # test samples per bucket
    steps: Positive  # Euler steps
    guidance: PositiveFloat  # CFG scale at sampling time
    image_guidance: PositiveFloat  # edits: InstructPix2Pix's source scale (1 = single-scale CFG on the text)
    seed: int
    batch_size: NonNegative  # test images sampled at once; 0 = a whole bucket
    evaluator: Evaluator


class Compute(Section):
    device: Literal["auto", "cpu", "cuda"]  # auto: cuda when available
    threads: NonNegative  # torch intra-op threads; 0 = torch's default
    compile: bool
    nproc: Positive  # training processes per stage (torchrun + DDP); 1 = a plain process
    grad_checkpointing: bool  # recompute each transformer block's activations in backward (memory for compute)


class Config(Section):
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
    settings: dict[str, Setting]
    run: Run
    eval: Eval
    compute: Compute
    _methods: dict[tuple[str, str], Method] = PrivateAttr(default_factory=dict)

    def method(self, setting: str, name: str) -> Method:
        """The method ``distill.methods.<name>`` resolved for ``settings.<setting>``."""
        if (setting, name) not in self._methods:
            raise ConfigError(f"settings.{setting}.methods: no method {name!r} "
                              f"(the setting runs {self.settings[setting].methods if setting in self.settings else []})")
        return self._methods[(setting, name)]

    def sources(self) -> list[str]:
        """The names of the source models a field or a student init may name: base and the experts."""
        return ["base", *self.experts]


def load(path: str | Path = "params.yaml") -> Config:
    """Read and validate a params file, as YAML 1.2 (what DVC reads: ``yes`` and ``on`` are strings)."""
    path = Path(path)
    try:
        raw = YAML(typ="safe", pure=True).load(path.read_text())
    except (OSError, YAMLError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from err
    return parse(raw, str(path))


def parse(raw: Any, source: str) -> Config:
    """Validate the parsed YAML ``raw``; errors name ``source`` and the dotted key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {'empty' if raw is None else 'not a mapping of sections'}; expected the "
                          f"sections {', '.join(Config.model_fields)}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from err
    problems = _check(cfg)
    if not problems:  # methods resolve against valid settings
        cfg._methods.update({(s, m): _resolve(cfg, s, m, problems) for s, setting in cfg.settings.items()
                             for m in setting.methods})
    if problems:
        raise ConfigError(_listed(source, problems))
    _locate(cfg, "")
    _start_trace()
    return cfg


def _check(cfg: Config) -> list[str]:
    """The rules that span keys: every named model and method exists, every route has a weight."""
    sources, problems = cfg.sources(), []
    csv = Path(cfg.data.external_csv)
    if cfg.data.external_csv and (csv.is_absolute() or csv.parts[0] != "external" or ".." in csv.parts):
        problems.append(f"data.external_csv: {cfg.data.external_csv!r} must be a path under external/ "
                        f"(the folder curate depends on, so that changing the data reruns it)")
    if not cfg.model.pretrained and cfg.world.resolution % cfg.model.patch_size:
        problems.append(f"model.patch_size: {cfg.model.patch_size} does not divide world.resolution "
                        f"{cfg.world.resolution} (the image is cut into patch_size x patch_size patches)")
    if cfg.text.encoder not in ("minilm", "pretrained") and not (Path(cfg.text.encoder) / "config.json").is_file():
        problems.append(f"text.encoder: {cfg.text.encoder!r} is neither 'minilm', 'pretrained' nor a local "
                        f"transformers folder (no config.json there)")
    if cfg.eval.count > cfg.data.test_per_bucket:
        problems.append(f"eval.count: {cfg.eval.count} test samples a bucket, but data.test_per_bucket curates "
                        f"{cfg.data.test_per_bucket}")
    for name, setting in cfg.settings.items():
        where = f"settings.{name}"
        for route, source in setting.routes.items():
            if source not in sources:
                problems.append(f"{where}.routes.{route}: {source!r} is not a source model (expected one of {sources})")
            if route not in cfg.routing.weights:
                problems.append(f"routing.weights.{route}: missing weight for route {route!r} of {where}")
        if setting.init not in sources:
            problems.append(f"{where}.init: {setting.init!r} is not a source model (expected one of {sources})")
        if unknown := [m for m in setting.methods if m not in cfg.distill.methods]:
            problems.append(f"{where}.methods: {unknown} not in distill.methods {sorted(cfg.distill.methods)}")
        used = bool(setting.methods) or name in cfg.run.baselines or name in cfg.run.teachers
        untrained = [s for s in dict.fromkeys([*setting.routes.values(), setting.init])
                     if s in cfg.experts and s not in cfg.run.experts]
        if used and untrained:
            problems.append(f"run.experts: {untrained} (sources of {where}, which runs) are not trained; "
                            f"add them to run.experts")
        if len(set(setting.seeds)) != len(setting.seeds):
            problems.append(f"{where}.seeds: {setting.seeds} repeats a seed")
        if not problems and sum(cfg.routing.weights[r] for r in setting.routes) <= 0:
            problems.append(f"routing.weights: every route of {where} has weight 0")
    if cfg.text.encoder == "pretrained" and not cfg.model.pretrained:
        problems.append("text.encoder: 'pretrained' means the text encoders of model.pretrained, which is empty; "
                        "set model.pretrained to a local SD3-family diffusers folder")
    if cfg.model.prediction != "velocity" and cfg.model.pretrained:
        problems.append(f"model.prediction: {cfg.model.prediction!r}, but model.pretrained is an SD3-family model, "
                        f"which predicts the velocity (use prediction: velocity with it)")
    if cfg.model.lora_rank and not cfg.model.pretrained:
        problems.append(f"model.lora_rank: {cfg.model.lora_rank} trains LoRA adapters on a pretrained base, but "
                        f"model.pretrained is empty (set it, or lora_rank: 0 for full fine-tuning)")
    for key in ("baselines", "teachers"):
        if unknown := [n for n in getattr(cfg.run, key) if n not in cfg.settings]:
            problems.append(f"run.{key}: {unknown} are not settings (expected some of {sorted(cfg.settings)})")
    if unknown := [n for n in cfg.run.experts if n not in cfg.experts]:
        problems.append(f"run.experts: {unknown} are not experts (expected some of {sorted(cfg.experts)})")
    return problems


def _resolve(cfg: Config, setting: str, name: str, problems: list[str]) -> Method:
    """``distill``, ``routing.mode``/``per`` and the setting's init, with the overrides of method ``name``."""
    shared = [k for k in Method.model_fields if k not in ("routing_mode", "routing_per", "init")]
    values = {key: getattr(cfg.distill, key) for key in shared}
    values |= {"routing_mode": cfg.routing.mode, "routing_per": cfg.routing.per, "init": cfg.settings[setting].init}
    origins = {key: f"distill.{key}" for key in shared}
    origins |= {"routing_mode": "routing.mode", "routing_per": "routing.per", "init": f"settings.{setting}.init"}
    overrides = cfg.distill.methods[name]
    for key in overrides.model_fields_set if overrides is not None else ():
        values[key], origins[key] = getattr(overrides, key), f"distill.methods.{name}.{key}"
    if values["queries"] == "all":
        values["queries"] = values["rollout_steps"]
    if values["init"] not in cfg.sources():
        problems.append(f"{origins['init']}: {values['init']!r} is not a source model")
    if values["queries"] > values["rollout_steps"]:
        problems.append(f"{origins['queries']}: {values['queries']} queries but only {values['rollout_steps']} "
                        f"rollout states ({origins['rollout_steps']})")
    method = Method.model_validate(values)
    method._origins.update(origins)
    return method


def _locate(section: Section, where: str) -> None:
    """Give every section its dotted key (for tracing)."""
    section._where = where
    for name, field in type(section).model_fields.items():
        value = section.__dict__[name]
        key = f"{where}.{field.alias or name}" if where else name
        if isinstance(value, Section):
            _locate(value, key)
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, Section):
                    _locate(v, f"{key}.{k}")
    for (_, name), method in getattr(section, "_methods", {}).items():
        _locate(method, f"distill.methods.{name}")


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = [p for p in e["loc"] if not _UNION_TAG.match(str(p))]  # pydantic tags a union's members
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        if e["type"] == "extra_forbidden":
            expected = _keys_at(e["loc"][:-1])
            lines.append(f"{key}: unknown key" + (f" (expected one of {expected})" if expected else ""))
        elif e["type"] == "missing":
            lines.append(f"{key}: missing key")
        else:
            lines.append(f"{key}: {e['msg']}, got {e['input']!r}")
    return _listed(source, list(dict.fromkeys(lines)))


_UNION_TAG = re.compile(r"^(\[key\]|constrained-\w+|literal\[.*\]|function-\w+\[.*\]|int|float|str|bool|none)$")


def _keys_at(loc: tuple) -> list[str]:
    """The keys allowed at the section ``loc`` (by walking the model classes), or [] if unknown."""
    cls: Any = Config
    for part in loc:
        if isinstance(cls, type) and issubclass(cls, Section) and part in cls.model_fields:
            cls = cls.model_fields[part].annotation
        elif typing.get_origin(cls) is dict:
            cls = typing.get_args(cls)[1]
        else:
            return []
        cls = next((a for a in typing.get_args(cls) if isinstance(a, type) and issubclass(a, Section)), cls)
    if not (isinstance(cls, type) and issubclass(cls, Section)):
        return []
    return [f.alias or name for name, f in cls.model_fields.items()]


def _listed(source: str, problems: list[str]) -> str:
    problems = list(dict.fromkeys(problems))  # a bad default is reported once, not once per method
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    return f"{source}: {len(problems)} problems:\n" + "\n".join(f"  {source}: {p}" for p in problems)


def _start_trace() -> None:
    global _read
    folder = os.environ.get(TRACE_ENV)
    if folder and _read is None:
        _read = set()
        atexit.register(_write_trace, Path(folder))


def _write_trace(folder: Path) -> None:
    argv = sys.orig_argv[1:]
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:16]
    (folder / f"{name}.json").write_text(json.dumps({"argv": argv, "read": sorted(_read or ())}, indent=1))
