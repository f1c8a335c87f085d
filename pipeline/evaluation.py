"""Evaluate one model (or any field): sample the fixed-seed test prompts, compute every metric.

The test set is the first `eval.count` test samples of each bucket, sampled with `eval.steps`
Euler steps from noise seeded by `eval.seed`, so every model sees the same prompts and noise.
- t2i bucket: `geneval` (parsed scene vs the prompt's spec), `fid` (evaluator features of the
  outputs vs the real test renders), `clip_score` (outputs vs prompts);
- local_edit + global_edit buckets: `gedit` (parsed output == target scene, per category, and
  their mean), `preservation` (PSNR of the untouched cells, local edits);
- realism bucket: `realism`, the mean realism reward (the same kind of prompts as t2i);
- cost: `nfe` per image (steps, x2 with CFG) and `sec_per_image`.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pipeline import data, metrics, world
from pipeline.sample import generate, grid

BUCKETS = ("t2i", "local_edit", "global_edit", "realism")


def sample_bucket(field, shards: Path, bucket: str, eval_cfg, shift: float, guidance: float, null, device):
    """(test records, outputs uint8 (N, H, W, 3), seconds) for one bucket's first `eval.count` tests."""
    test = data.load_tensors(shards, [bucket], "test", limit=eval_cfg.count)
    x, cond = test.batch(torch.arange(len(test)))
    tic = time.perf_counter()
    out = generate(field, cond, steps=eval_cfg.steps, shift=shift, seed=eval_cfg.seed, guidance=guidance,
                   null=null, image_shape=tuple(x.shape[1:]), device=device)
    return test, data.to_uint8(out), time.perf_counter() - tic


def evaluate(field, ev, shards: Path, eval_cfg, shift: float, guidance: float, device) -> tuple[dict, np.ndarray]:
    """All metrics of one model and a grid of its first outputs per bucket."""
    null = data.read_null(shards)
    out, seconds, rows = {}, 0.0, []
    for bucket in BUCKETS:
        test, images, sec = sample_bucket(field, shards, bucket, eval_cfg, shift, guidance, null, device)
        out[bucket] = (test, images)
        seconds += sec
        if bucket in ("local_edit", "global_edit"):
            rows.append(np.stack([r.source for r in test.records[:8]]))
        rows.append(images[:8])
    result = _t2i_metrics(ev, *out["t2i"]) | _edit_metrics(ev, out["local_edit"], out["global_edit"])
    result["realism"] = metrics.realism(ev, out["realism"][1])
    n_images = sum(len(images) for _, images in out.values())
    result |= {"nfe": eval_cfg.steps * (1 if guidance == 1.0 else 2), "guidance": guidance,
               "sec_per_image": seconds / n_images}
    return result, grid(rows)


def _t2i_metrics(ev, test, images) -> dict:
    samples = [data.world_sample(r.meta) for r in test.records]
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
        samples = [data.world_sample(r.meta) for r in test.records]
        targets += [s.target for s in samples]
        categories += [s.category for s in samples]
        parsed += ev.parse(images)
    mean, by_category = metrics.gedit(parsed, targets, categories)
    test, images = local
    samples = [data.world_sample(r.meta) for r in test.records]
    sources = np.stack([r.source for r in test.records])
    edited = [world.edited_cells(s.source, s.target) for s in samples]
    return {"gedit": mean, "gedit_by_category": by_category,
            "preservation": metrics.preservation(images, sources, edited, images.shape[1])}


TEACHERS = {"teacher": False, "teacher_cfg": True}  # the routed sources, plain or guided at fields.cfg_scale


def load_field(cfg, name: str, folder: Path | None, models_root: Path | None, device) -> tuple[object, float]:
    """(field, guidance) to evaluate: a checkpoint folder, or the routed teacher by name."""
    from pipeline import backbone
    from pipeline.fields import ModelField, RoutedField

    if name not in TEACHERS:
        if folder is None:
            raise ValueError(f"evaluate {name}: needs --model <checkpoint folder>")
        return backbone.load(folder).to(device).eval(), cfg.eval.guidance
    if models_root is None:
        raise ValueError(f"evaluate {name}: needs --models <root of the trained models>")
    names = [getattr(cfg.fields, task) for task in world.TASKS]  # route k = world.TASKS[k], the true label
    fields = [ModelField(backbone.load(backbone.model_dir(models_root, n, cfg.experts)).to(device)) for n in names]
    return RoutedField(fields, "hard"), cfg.fields.cfg_scale if TEACHERS[name] else cfg.eval.guidance
