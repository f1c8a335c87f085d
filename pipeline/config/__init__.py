"""Strict, typed loader of params.yaml: the single validator of every parameter.

Three modules: `schema` (the sections), `loader` (`load`, `parse` and the cross-key rules) and
`trace` (which keys a process reads); this package re-exports what the stages use.

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
from pipeline.config import trace  # noqa: F401  (re-exported, as are the names below)
from pipeline.config.loader import load, parse
from pipeline.config.schema import (
    BaseRecipe, Bucket, Compute, Config, ConfigError, Data, Distill, Eval, Evaluator, Expert, Fields, Method,
    MethodOverrides, Model, ModelPreset, NonNegative, Positive, PositiveFloat, Probability, Query, Recipe,
    RouteName, Router, Routing, RoutingMode, RoutingPer, Run, Section, Setting, States, Stream, TSampling,
    Text, Train, Weighting, World)
from pipeline.config.trace import TRACE_ENV
