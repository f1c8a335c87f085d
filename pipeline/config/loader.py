"""Reading params.yaml: YAML 1.2 as DVC reads it, validated against `pipeline.config.schema`, then the
rules that span sections (`_check`), the methods resolved per setting (`_resolve`), every section
given its dotted key (`_locate`, for tracing); every problem listed, each naming the file and key.
"""
from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML, YAMLError

from pipeline.config import trace
from pipeline.config.schema import Config, ConfigError, Method, Section


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
    trace.start()
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
    for name, overrides in cfg.distill.methods.items():  # every method, run by a setting or not (yet)
        given = overrides.model_fields_set if overrides is not None else set()
        pick = lambda key: ((getattr(overrides, key), f"distill.methods.{name}.{key}") if key in given  # noqa: E731
                            else (getattr(cfg.distill, key), f"distill.{key}"))
        (queries, q_key), (steps, r_key) = pick("queries"), pick("rollout_steps")
        if queries != "all" and queries > steps:
            problems.append(f"{q_key}: {queries} queries but only {steps} rollout states ({r_key})")
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
