"""The training run SFT and distillation share, around their own data and step: the model made ready
(activation checkpointing, a LoRA adapter), `fit` with its checkpoints in ``<out>.partial/``
(resumed after a kill), and the trained model saved with its training log and sampling card.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.core import backbone, checkpoint
from pipeline.core.batches import Curated
from pipeline.core.latents import Space
from pipeline.train.loop import Fit, Loop, StepFn, fit


def ready(model: nn.Module, grad_checkpointing: bool, lora_rank: int, seed: int) -> nn.Module:
    """`model` set up to train: each block's activations recomputed in backward if asked
    (``compute.grad_checkpointing``), and with ``lora_rank`` > 0 a LoRA adapter (seeded by `seed`)
    on its frozen weights, merged when the model is saved."""
    if grad_checkpointing:
        model.checkpoint_activations()
    if lora_rank:
        backbone.add_lora(model, lora_rank, seed)
    return model


def fit_and_save(model: nn.Module, step: StepFn, batches, loop: Loop, *, rng, out: Path, name: str, recipe: dict,
                 run_id: str, shift: float, data: Curated, space: Space, side: int, device: torch.device,
                 on_log=None, on_sample=None) -> Fit:
    """Train `model` (`pipeline.train.loop.fit`), resuming from ``<out>.partial/`` when a killed run
    left it there, then save it to `out` with the log {name, recipe, history} and a sampling card
    (`side`: the size of its inputs; the card records the pixels of images, through `space`);
    `on_sample`: `fit`'s validation hook."""
    work = checkpoint.work_dir(out)
    result = fit(model, step, batches, loop, rng=rng, work=work, run_id=run_id, device=device, on_log=on_log,
                 on_sample=on_sample)
    sampling = checkpoint.sampling_card(shift, side * space.downsample, data.embeddings.info, space.card())
    checkpoint.save_model(result.model, out, {"name": name, "recipe": recipe, "history": result.history}, sampling)
    checkpoint.finish(work)
    return result
