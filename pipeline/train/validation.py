"""Validation samples during training (``train.sample_every``), as the peers' toolkits log them: every
N steps (and once before the first, the init) the model samples a fixed handful of test prompts of
its buckets from fixed noise, with its own sampling steps (a student: its rollout's); the stage's MLflow run gets their labelled grid and their scores by
the evaluator: realism reward and GenEval-style on prompt-only buckets, GEdit on edits, each with
its bootstrap interval (`pipeline.eval.stats`), so a long run can be watched and one run gives a
score-over-training curve (`pipeline.figures`).

It only reads the model (no gradient, its own noise, the model back in train mode after), so the
trained weights are the same bytes with it on or off; the evaluator feeds MLflow only.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core import compute
from pipeline.core.batches import Curated
from pipeline.data import shards
from pipeline.eval import metrics, stats
from pipeline.eval.evaluator import Evaluator
from pipeline.eval.sample import Panel, generate, labelled_grid, noise_like

PROMPTS = 32  # test prompts per bucket: enough for a realism interval of about +-0.1, a second on the CPU
SHOWN = 8  # of them in the grid
SEED = 0  # the noise: the same at every step and in every run


class Validation:
    """A callable `(step, model)` for `pipeline.train.loop.fit`: samples, scores and logs to `run`."""

    def __init__(self, evaluator: Evaluator, data: Curated, buckets, steps: int, shift: float, device, run,
                 route_of_bucket=None):
        self.ev, self.data, self.run, self.device = evaluator, data, run, device
        self.steps, self.shift, self.null = steps, shift, tuple(v.to(device) for v in data.null())
        self.tests = {b: data.tensors([b], "test", limit=PROMPTS, route_of_bucket=route_of_bucket).to(device)
                      for b in buckets}
        self.history: list[dict] = []

    def __call__(self, step: int, model: nn.Module) -> dict:
        model.eval()
        row, panels = {"step": step}, []
        for bucket, test in self.tests.items():
            images = self._sample(model, test)
            row |= self._scores(bucket, test, images)
            panels.append(Panel(f"{bucket} at step {step}", [images[:SHOWN]], [r.prompt for r in test.records[:SHOWN]]))
        model.train()
        self.history.append(row)
        self.run.log_metrics({f"val/{k}": v for k, v in row.items() if k != "step"}, step)
        with tempfile.TemporaryDirectory() as folder:  # the same name in every run: MLflow's compare view
            path = Path(folder) / f"validation_step_{step:06d}.png"
            labelled_grid(panels).save(path)
            self.run.log_artifact(path)
        return row

    def _sample(self, model: nn.Module, test) -> np.ndarray:
        shape = tuple(test.image.shape[1:])
        _, cond = test.batch(torch.arange(len(test), device=self.device))
        with compute.autocast(self.device):  # unguided, as the student is trained to sample
            x = generate(model, cond, steps=self.steps, shift=self.shift, seed=SEED, null=self.null,
                         image_shape=shape, device=self.device, noise=noise_like(len(test), shape, SEED))
        return shards.to_uint8(self.data.space.decode(x.float()))

    def _scores(self, bucket: str, test, images: np.ndarray) -> dict:
        samples = [shards.world_sample(r.meta) for r in test.records]
        parsed = self.ev.parse(images)
        if test.has_source.any():  # an edit: the parsed output is the target scene
            ok = np.asarray(metrics.gedit_outcomes(parsed, [s.target for s in samples]), dtype=np.float64)
            return _scored(f"{bucket}/gedit", ok)
        ok = np.asarray(metrics.geneval_outcomes(parsed, [s.spec for s in samples]), dtype=np.float64)
        return _scored(f"{bucket}/geneval", ok) | _scored(f"{bucket}/realism", self.ev.realism(images).cpu().numpy())


def _scored(name: str, values: np.ndarray) -> dict:
    lo, hi = stats.interval(values)
    return {name: float(np.mean(values)), f"{name}_lo": lo, f"{name}_hi": hi}
