"""Evaluate one model (or any field): sample the fixed-seed test prompts, compute every metric.

The test set is the first `eval.count` test samples of each bucket, sampled with `eval.steps`
Euler steps from noise seeded by `eval.seed`, so every model sees the same prompts and noise.
- t2i bucket: `geneval` (parsed scene vs the prompt's spec), `fid` (evaluator features of the
  outputs vs the real test renders), `clip_score` (outputs vs prompts);
- local_edit + global_edit buckets: `gedit` (parsed output == target scene, per category, and
  their mean), `preservation` (PSNR of the untouched cells, local edits);
- realism bucket: `realism`, the mean realism reward (the same kind of prompts as t2i);
- cost: `nfe` per image (steps, x2 with CFG) and `sec_per_image`.

What is evaluated (`load_field`) is a checkpoint folder, or by name the routed teacher the students
learn from (`TEACHERS`): `teacher` samples it unguided (at `eval.guidance`), `teacher_cfg` at
guidance `fields.cfg_scale`, the target CFG absorption distils.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.core import backbone, checkpoint, teacher
from pipeline.core.batches import Curated
from pipeline.eval.sample import Panel, generate, labelled_grid
from pipeline.data import shards, world
from pipeline.eval import metrics

BUCKETS = ("t2i", "local_edit", "global_edit", "realism")
GRID_COLUMNS = 8  # test samples per bucket shown in the sample grid
TEACHERS = {"teacher": False, "teacher_cfg": True}  # name -> sampled at fields.cfg_scale


def sample_bucket(field, data: Curated, bucket: str, eval_params, shift: float, guidance: float, device,
                  route_of_bucket: Mapping[str, int] | None = None):
    """(test records, outputs uint8 (N, H, W, 3), seconds) for one bucket's first `eval.count` tests."""
    test = data.tensors([bucket], "test", limit=eval_params.count, route_of_bucket=route_of_bucket)
    x, cond = test.batch(torch.arange(len(test)))
    tic = time.perf_counter()
    out = generate(field, cond, steps=eval_params.steps, shift=shift, seed=eval_params.seed, guidance=guidance,
                   null=data.null(), image_shape=tuple(x.shape[1:]), device=device)
    return test, shards.to_uint8(out), time.perf_counter() - tic


def evaluate(field, ev, data: Curated, eval_params, shift: float, guidance: float, device,
             route_of_bucket: Mapping[str, int] | None = None) -> tuple[dict, Image.Image]:
    """All metrics of one model, and a grid of its first outputs per bucket labelled with their prompts."""
    out, seconds, panels = {}, 0.0, []
    for bucket in BUCKETS:
        test, images, sec = sample_bucket(field, data, bucket, eval_params, shift, guidance, device, route_of_bucket)
        out[bucket] = (test, images)
        seconds += sec
        shown = test.records[:GRID_COLUMNS]
        sources = [np.stack([r.source for r in shown])] if shown[0].source is not None else []
        title = f"{bucket}: " + ("source (top), output (bottom)" if sources else "output for the prompt")
        panels.append(Panel(title, sources + [images[:GRID_COLUMNS]], [r.prompt for r in shown]))
    result = _t2i_metrics(ev, *out["t2i"]) | _edit_metrics(ev, out["local_edit"], out["global_edit"])
    result["realism"] = metrics.realism(ev, out["realism"][1])
    n_images = sum(len(images) for _, images in out.values())
    result |= {"nfe": eval_params.steps * (1 if guidance == 1.0 else 2), "guidance": guidance,
               "sec_per_image": seconds / n_images}
    return result, labelled_grid(panels)


def _t2i_metrics(ev, test, images) -> dict:
    samples = [shards.world_sample(r.meta) for r in test.records]
    mean, by_category = metrics.geneval(ev.parse(images), [s.spec for s in samples], [s.category for s in samples])
    real = np.stack([r.image for r in test.records])
    return {
        "geneval": mean, "geneval_by_category": by_category,
        "fid": metrics.fid(ev.features(images).cpu().numpy(), ev.features(real).cpu().numpy()),
        "clip_score": metrics.clip_score(ev, images, [r.prompt for r in test.records]),
    }


def _edit_metrics(ev, local, global_) -> dict:
    targets, categories, parsed = [], [], []
    for test, images in (local, global_):
        samples = [shards.world_sample(r.meta) for r in test.records]
        targets += [s.target for s in samples]
        categories += [s.category for s in samples]
        parsed += ev.parse(images)
    mean, by_category = metrics.gedit(parsed, targets, categories)
    test, images = local
    samples = [shards.world_sample(r.meta) for r in test.records]
    sources = np.stack([r.source for r in test.records])
    edited = [world.edited_cells(s.source, s.target) for s in samples]
    return {"gedit": mean, "gedit_by_category": by_category,
            "preservation": metrics.preservation(images, sources, edited, images.shape[1])}


def load_field(name: str, eval_params, fields, *, model: Path | None, base: Path | None, experts: Path | None,
               device) -> tuple[object, float, dict[str, int] | None]:
    """(field, guidance, route_of_bucket) to evaluate: a checkpoint folder, or the routed teacher by name."""
    if name not in TEACHERS:
        if model is None:
            raise ValueError(f"evaluate {name}: needs --model <checkpoint folder>")
        return backbone.load(model).to(device).eval(), eval_params.guidance, None
    if base is None or experts is None:
        raise ValueError(f"evaluate {name}: needs --base and --experts, the source checkpoints")
    routes = teacher.routes(fields)  # each sample takes its true route (no router)
    sources = checkpoint.source_folders(base, experts, [r.source for r in routes])
    field = teacher.load_teacher(routes, sources, device, "hard")
    guidance = fields.guidance_scale if TEACHERS[name] else eval_params.guidance
    return field, guidance, teacher.route_index(routes)
