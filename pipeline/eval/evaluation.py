"""Evaluate one model (or any field): sample the fixed-seed test prompts, compute every metric.

The test set is the first `eval.count` test samples of each bucket, sampled with `eval.steps`
Euler steps from noise seeded by `eval.seed`, so every model sees the same prompts and noise.
- t2i bucket: `geneval` (parsed scene vs the prompt's spec), `kid` and `fid` (evaluator features
  of the outputs vs the evaluator's cached real reference set, disjoint from the test targets; FID
  beside its real-vs-real `fid_floor` at the same size, without an interval), `clip_score`;
- local_edit + global_edit buckets: `gedit` (parsed output == target scene, per category, and
  their mean), `preservation` (PSNR of the untouched cells, local edits);
- realism bucket: `realism`, the mean realism reward (the same kind of prompts as t2i);
- cost: `nfe` per image (steps, x2 with CFG) and `sec_per_image`.

A model of a VAE's latent space (a pretrained SD3-family model) is sampled in it, from the test
sources encoded by `data`'s space, and its samples decoded to pixels (in the timed part) before the
evaluator, which always sees the world's renders' pixels (`pipeline.core.latents`).

Every score but FID has a bootstrap 95% interval (`<name>_ci`, `pipeline.eval.stats`), and the
per-sample outcomes behind them are kept (`outcomes`), so intervals, paired differences and
verdicts can be recomputed (`python -m pipeline.report`).

What is evaluated (`load_field`) is a checkpoint folder, or by name a setting's routed teacher, the
field its students learn (`TEACHERS`): `teacher` samples it unguided (at `eval.guidance`),
`teacher_cfg` at guidance `fields.cfg_scale`, the target CFG absorption distils.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.core import backbone, checkpoint, compute, teacher
from pipeline.core.batches import Curated
from pipeline.core.latents import Space
from pipeline.eval.sample import Panel, generate, labelled_grid, noise_like
from pipeline.data import shards, world
from pipeline.eval import metrics, scoring, stats

BUCKETS = world.BUCKETS  # every bucket is evaluated
GRID_COLUMNS = 8  # test samples per bucket shown in the sample grid
TEACHERS = {"teacher": False, "teacher_cfg": True}  # name -> sampled at fields.cfg_scale


def sample_bucket(field, data: Curated, bucket: str, eval_params, shift: float, guidance: float, device,
                  route_of_bucket: Mapping[str, int] | None = None):
    """(test records, outputs uint8 (N, H, W, 3), seconds) for one bucket's first `eval.count` tests,
    sampled in `data`'s space and decoded to pixels."""
    test = data.tensors([bucket], "test", limit=eval_params.count, route_of_bucket=route_of_bucket)
    shape = tuple(test.image.shape[1:])
    noise = noise_like(len(test), shape, eval_params.seed)  # the whole bucket's: any batch_size, the same images
    tic, out, null = time.perf_counter(), [], data.null()
    image_guidance = eval_params.image_guidance if test.has_source.any() else 1.0  # edits only
    for rows in torch.arange(len(test)).split(eval_params.batch_size or len(test)):  # eval.batch_size at once
        _, cond = test.batch(rows)
        with compute.autocast(device):  # bf16 on a GPU; the CPU's float32 as it was
            part = generate(field, cond, steps=eval_params.steps, shift=shift, seed=eval_params.seed,
                            guidance=guidance, null=null, image_shape=shape, device=device,
                            image_guidance=image_guidance, noise=noise[rows])
        out.append(data.space.decode(part.float()))  # (n, 3, H, W) in [-1, 1]: latents through the VAE
    return test, shards.to_uint8(torch.cat(out)), time.perf_counter() - tic


def evaluate(field, ev, data: Curated, eval_params, shift: float, guidance: float, device,
             route_of_bucket: Mapping[str, int] | None = None) -> tuple[dict, dict, Image.Image]:
    """(metrics with their 95% intervals, per-sample outcomes, a labelled grid of the first outputs)."""
    out, seconds, panels = {}, 0.0, []
    for bucket in BUCKETS:
        test, images, sec = sample_bucket(field, data, bucket, eval_params, shift, guidance, device, route_of_bucket)
        out[bucket] = (test, images)
        seconds += sec
        shown = test.records[:GRID_COLUMNS]
        sources = [np.stack([r.source for r in shown])] if shown[0].source is not None else []
        title = f"{bucket}: " + ("source (top), output (bottom)" if sources else "output for the prompt")
        panels.append(Panel(title, sources + [images[:GRID_COLUMNS]], [r.prompt for r in shown]))
    outcomes = _t2i_outcomes(ev, *out["t2i"]) | _edit_outcomes(ev, out["local_edit"], out["global_edit"])
    outcomes["realism"] = ev.realism(out["realism"][1]).tolist()
    result = scores(outcomes)
    result |= _distribution_metrics(ev, out["t2i"][1])
    n_images = sum(len(images) for _, images in out.values())
    result |= {"nfe": eval_params.steps * nfe_factor(guidance, eval_params.image_guidance), "guidance": guidance,
               "image_guidance": eval_params.image_guidance,
               "sec_per_image": seconds / n_images, "samples_per_bucket": eval_params.count}
    return result, outcomes, labelled_grid(panels)


def nfe_factor(guidance: float, image_guidance: float) -> int:
    """Network evaluations per sampling step of the costliest bucket: 1 unguided, 2 with CFG, 3 with
    the edits' two scales."""
    return 3 if image_guidance != 1.0 else 1 if guidance == 1.0 else 2


def scores(outcomes: dict) -> dict:
    """Every per-sample score's point estimate and bootstrap 95% interval (`pipeline.eval.scoring`)."""
    result = {}
    for name in ("geneval", "gedit", *scoring.MEAN_SCORES):
        point = scoring.score([outcomes], name)
        result[name] = point["value"]
        if name in scoring.CATEGORY_SCORES:
            result[f"{name}_by_category"] = scoring.by_category([outcomes], name)
        result[f"{name}_ci"] = point["ci"]
    return result


def _t2i_outcomes(ev, test, images) -> dict:
    samples = [shards.world_sample(r.meta) for r in test.records]
    ok = metrics.geneval_outcomes(ev.parse(images), [s.spec for s in samples])
    return {"geneval": {"ok": ok, "category": [s.category for s in samples]},
            "clip_score": ev.clip_score(images, [r.prompt for r in test.records]).tolist()}


def _edit_outcomes(ev, local, global_) -> dict:
    targets, categories, parsed = [], [], []
    for test, images in (local, global_):
        samples = [shards.world_sample(r.meta) for r in test.records]
        targets += [s.target for s in samples]
        categories += [s.category for s in samples]
        parsed += ev.parse(images)
    test, images = local
    samples = [shards.world_sample(r.meta) for r in test.records]
    sources = np.stack([r.source for r in test.records])
    edited = [world.edited_cells(s.source, s.target) for s in samples]
    return {"gedit": {"ok": metrics.gedit_outcomes(parsed, targets), "category": categories},
            "preservation": metrics.preservation_scores(images, sources, edited, images.shape[1])}


def _distribution_metrics(ev, images) -> dict:
    """KID (with its interval) and FID (a biased plug-in statistic: no interval, `pipeline.eval.stats`)
    of the T2I outputs against the evaluator's cached real reference, and FID's real-vs-real floor
    at the same sample size."""
    generated, reference = ev.features(images).cpu().numpy(), ev.reference
    floor, (kid, kid_ci) = stats.fid_floor(reference, len(generated)), stats.kid_with_interval(generated, reference)
    return {"kid": kid, "kid_ci": list(kid_ci),
            "fid": metrics.fid(generated, reference),
            "fid_floor": floor[0], "fid_floor_range": [floor[1], floor[2]], "reference_size": len(reference)}


def load_field(name: str, eval_params, fields, setting=None, *, model: Path | None, base: Path | None,
               experts: Path | None, device) -> tuple[object, float, dict[str, int] | None, Space]:
    """(field, guidance, route_of_bucket, space) to evaluate: a checkpoint folder, or a setting's routed
    teacher; the space (pixels or a VAE's latents) is the models' own, from their cards."""
    if name not in TEACHERS:
        if model is None:
            raise ValueError(f"evaluate {name}: needs --model <checkpoint folder>")
        frozen = backbone.load(model, frozen_on=device).to(device).eval()
        return frozen, eval_params.guidance, None, checkpoint.space([model], device)
    if base is None or experts is None or setting is None:
        raise ValueError(f"evaluate {name}: needs --setting, --base and --experts, the source checkpoints")
    routes = teacher.routes(setting)  # each sample takes its true route (no router)
    sources = checkpoint.source_folders(base, experts, [r.source for r in routes])
    field = teacher.load_teacher(routes, sources, device, "hard")
    guidance = fields.guidance_scale if TEACHERS[name] else eval_params.guidance
    route_of_bucket = teacher.route_index(routes, fallback=0)  # unrouted prompts: the first route's field
    return field, guidance, route_of_bucket, checkpoint.space(sources.values(), device)
