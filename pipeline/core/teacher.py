"""The routes registry and the one place a routed teacher is built.

A route is one capability the student learns: a name, the source model whose frozen field
supervises it and the data buckets whose samples take it. `ROUTE_BUCKETS` is the registry of
route names and their buckets; a setting (params ``settings.<name>.routes``) maps each of its
routes to a source model (``base`` or an expert). Route k of a teacher is ``cond.route == k``, in
the setting's order. A sample's route is the one that lists its bucket, else the one that lists
its task's bucket (the realism bucket's T2I prompts go to the T2I route); `route_index` gives it.

`build_teacher` turns one model per route into the teacher field: each distinct model frozen once
(`ModelField`), routed per sample (hard) or averaged with weights (soft) by `RoutedField`, and,
with guidance, wrapped in `GuidedField` (CFG absorption: the target is the guided field, the
student stays unguided). Distillation and evaluation both get their teacher from `load_teacher`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.core import backbone
from pipeline.core.fields import Field, GuidedField, ModelField, RoutedField
from pipeline.data import world


@dataclass(frozen=True)
class Route:
    name: str  # t2i | local_edit | global_edit | realism
    source: str  # the model whose field supervises it: base or an expert name
    buckets: tuple[str, ...]  # the data buckets whose samples take it


ROUTE_BUCKETS = world.ROUTE_BUCKETS  # route name -> the buckets whose samples take it (the world's vocabulary)


def routes(setting) -> list[Route]:
    """The routes of a setting (params ``settings.<name>``), in its order."""
    return [Route(name, source, ROUTE_BUCKETS[name]) for name, source in setting.routes.items()]


def buckets(routes: Sequence[Route]) -> list[str]:
    """The buckets the routes draw from, in route order."""
    return [b for r in routes for b in r.buckets]


def route_index(routes: Sequence[Route], fallback: int | None = None) -> dict[str, int]:
    """bucket -> route index, for every world bucket that some route takes (directly or by its task);
    with `fallback`, every other world bucket goes to that route (evaluating a teacher on prompts
    its setting has no route for, e.g. T2I prompts in Local + Global)."""
    index = {b: k for k, r in enumerate(routes) for b in r.buckets}
    for bucket, task in world.BUCKET_TASK.items():
        if bucket not in index and task in index:
            index[bucket] = index[task]
        elif bucket not in index and fallback is not None:
            index[bucket] = fallback
    return index


def build_teacher(models: Mapping[str, nn.Module], routes: Sequence[str], mode: str = "hard",
                  guidance: float | None = None, null: tuple[Tensor, Tensor] | None = None,
                  weights: Sequence[float] | None = None) -> Field:
    """The routed teacher: route k is the frozen field of ``models[routes[k]]``.

    ``weights`` weigh the routes' fields in soft mode (default uniform). ``guidance`` (a CFG scale)
    makes the target the guided field and needs the ``null`` text embeddings. A module shared by
    several routes becomes one ``ModelField``.
    """
    if missing := [r for r in routes if r not in models]:
        raise ValueError(f"build_teacher: no model for route(s) {missing} (have {sorted(models)})")
    frozen: dict[int, ModelField] = {}
    for r in routes:
        frozen.setdefault(id(models[r]), ModelField(models[r]))
    teacher: Field = RoutedField([frozen[id(models[r])] for r in routes], mode, weights)
    if guidance is not None:
        if null is None:
            raise ValueError("build_teacher: guidance needs the null text embedding")
        teacher = GuidedField(teacher, guidance, *null)
    return teacher


def load_teacher(routes: Sequence[Route], sources: Mapping[str, Path], device: torch.device, mode: str = "hard",
                 guidance: float | None = None, null: tuple[Tensor, Tensor] | None = None,
                 weights: Sequence[float] | None = None, compile: bool = False) -> Field:
    """`build_teacher` over the source checkpoints (name -> folder), each loaded once (and with
    `compile`, `compute.compile`, each frozen model compiled once)."""
    loaded: dict[str, nn.Module] = {}
    for r in routes:
        if r.source not in sources:
            raise ValueError(f"route {r.name}: no checkpoint for source {r.source!r} (have {sorted(sources)})")
        if r.source not in loaded:
            model = backbone.load(sources[r.source], frozen_on=device).to(device)
            loaded[r.source] = torch.compile(model) if compile else model
    return build_teacher({r.name: loaded[r.source] for r in routes}, [r.name for r in routes], mode, guidance, null,
                         weights)
