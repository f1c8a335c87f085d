"""The one training loop every training stage uses: ``fit(model, step_fn, batches, loop)``.

A step function is a pure loss ``step_fn(model, batch, generator) -> scalar`` of one batch
``(x, cond)``; SFT (`pipeline.train.sft`) and distillation (`pipeline.train.distill`) are step
functions. ``batches`` is an iterator of batches (`pipeline.core.batches.random_batches`). The
loop owns everything around the loss: AdamW, gradient accumulation over ``grad_accum``
micro-batches, gradient clipping, optional EMA, bf16 autocast on CUDA, optional
``torch.compile`` of the forward, a NaN/inf guard (the stage fails instead of saving a broken
model), a progress bar, logging, and a checkpoint every ``checkpoint_every`` steps from which a
killed stage resumes (`pipeline.core.checkpoint`).

Randomness: the step draws its noise, times and dropout from ``rng``, and the batch stream draws
its rows from the same generator, lazily. The loop checkpoints ``rng`` (and the stream's
``state_dict()`` when it has one), so a resumed run equals an uninterrupted one and the same seed
gives the same weights on the CPU.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.core import checkpoint, compute
from pipeline.core.batches import Batch

StepFn = Callable[[nn.Module, Batch, torch.Generator], Tensor]


@dataclasses.dataclass(frozen=True)
class Loop:
    """How to optimise: what `fit` needs besides the model, the step and the batches."""

    steps: int  # optimizer steps
    lr: float
    weight_decay: float
    grad_clip: float
    ema: float  # EMA decay; 0 = off
    grad_accum: int  # micro-batches per optimizer step
    checkpoint_every: int
    log_every: int
    compile: bool  # torch.compile the forward (the GPU path)


@dataclasses.dataclass
class Fit:
    """What `fit` returns."""

    model: nn.Module  # the trained model (its EMA when on), in eval mode
    history: list[dict]  # {step, loss, grad_norm} every log_every steps: a function of params and seed
    seconds: float  # wall time of the steps this process ran
    samples: int  # samples this process trained on

    def summary(self) -> dict:
        """Final loss and cost, for the stage's metrics file and MLflow (timings live there, not in the model)."""
        last = self.history[-1] if self.history else {"step": 0, "loss": float("nan")}
        return {"steps": last["step"], "final_loss": last["loss"], "seconds": round(self.seconds, 1),
                "samples_per_s": round(self.samples / self.seconds, 1) if self.samples else 0.0}


class EMA:
    """Exponential moving average of a model's parameters (off when decay is 0)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False) if decay > 0 else None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self.model is not None:
            for avg, p in zip(self.model.parameters(), model.parameters()):
                avg.lerp_(p, 1.0 - self.decay)

    def final(self, model: nn.Module) -> nn.Module:
        return model if self.model is None else self.model


def fit(model: nn.Module, step_fn: StepFn, batches: Iterator[Batch], loop: Loop, *, rng: torch.Generator,
        work: Path, run_id: str, device: torch.device, on_log: Callable[[int, dict], None] | None = None) -> Fit:
    """Train `model` for `loop.steps` optimizer steps of `step_fn` over `batches`."""
    model.to(device).train()
    forward = torch.compile(model) if loop.compile else model  # the uncompiled module is what gets saved
    opt = torch.optim.AdamW(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    ema = EMA(model, loop.ema)
    progress = {"step": 0, "history": []}
    _resume(work, run_id, model, opt, ema, rng, batches, progress)
    name = work.name.removesuffix(".partial")
    bar = tqdm(total=loop.steps, initial=progress["step"], mininterval=5.0, desc=name, unit="step")
    tic = start = time.perf_counter()
    window, seen, total_seen = [], 0, 0
    while progress["step"] < loop.steps:
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for _ in range(loop.grad_accum):
            batch = next(batches)
            with compute.autocast(device):
                loss = step_fn(forward, batch, rng)
            if not torch.isfinite(loss):  # resuming would replay it: the saved state goes too
                checkpoint.finish(work)
                raise FloatingPointError(f"{name}: loss is {loss.item()} at step {progress['step']}; stopping")
            (loss / loop.grad_accum).backward()
            loss_sum += loss.item() / loop.grad_accum
            seen += len(batch[0])
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
        opt.step()
        ema.update(model)
        progress["step"] += 1
        window.append(loss_sum)
        bar.update(1)
        if progress["step"] % loop.log_every == 0 or progress["step"] == loop.steps:
            row = {"step": progress["step"], "loss": sum(window) / len(window), "grad_norm": float(grad_norm)}
            progress["history"].append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if on_log:
                on_log(progress["step"], row | {"samples_per_s": seen / (time.perf_counter() - tic)})
            tic, window, total_seen, seen = time.perf_counter(), [], total_seen + seen, 0
        if progress["step"] % loop.checkpoint_every == 0 and progress["step"] < loop.steps:
            _save(work, run_id, model, opt, ema, rng, batches, progress)
    bar.close()
    return Fit(ema.final(model).eval(), progress["history"], time.perf_counter() - start, total_seen + seen)


def _save(work: Path, run_id: str, model, opt, ema: EMA, rng, batches, progress: dict) -> None:
    checkpoint.save_state(work, run_id, {
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        "ema": None if ema.model is None else ema.model.state_dict(), "generator": rng.get_state(),
        "batches": batches.state_dict() if hasattr(batches, "state_dict") else None, "progress": progress})


def _resume(work: Path, run_id: str, model, opt, ema: EMA, rng, batches, progress: dict) -> None:
    state = checkpoint.load_state(work, run_id)
    if state is None:
        return
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if ema.model is not None:
        ema.model.load_state_dict(state["ema"])
    rng.set_state(state["generator"])
    if state["batches"] is not None:
        batches.load_state_dict(state["batches"])
    progress.update(state["progress"])
    print(f"{work / checkpoint.STATE}: resuming at step {progress['step']}")
