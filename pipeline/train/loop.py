"""The one training loop every training stage uses: ``fit(model, step_fn, batches, loop)``.

A step function is a pure loss ``step_fn(model, batch, generator) -> scalar`` of one batch
``(x, cond)``; SFT (`pipeline.train.sft`) and distillation (`pipeline.train.distill`) are step
functions. ``batches`` is an iterator of batches (`pipeline.core.batches.random_batches`). The
loop owns everything around the loss: AdamW with a warm-up and optional cosine decay, gradient
accumulation over ``grad_accum`` micro-batches, gradient clipping, optional EMA (with warm-up),
bf16 autocast and fused AdamW on CUDA, optional ``torch.compile`` of the forward, a NaN/inf guard
(the stage fails instead of saving a broken model), a progress bar, logging, and a checkpoint
every ``checkpoint_every`` steps from which a killed stage resumes (`pipeline.core.checkpoint`).

The loop reads nothing from the device inside a step: the loss is summed on the device and read,
with the NaN/inf guard, only every ``log_every`` steps and before a checkpoint (on a GPU, a read
per step would stall the queue of kernels each time). The batches and ``rng`` live on the training
device, so nothing is copied in either (`pipeline.core.batches`).

Under torchrun (`compute.nproc` > 1) the model is wrapped in DistributedDataParallel: each
process trains on its own batches (its share of the global batch, from its own generators) and
the gradients are averaged, so N processes take the steps of one process with the global batch;
the logged loss is the mean over processes, and only rank 0 writes checkpoints (holding every
rank's generators, so a resumed run with the same number of processes equals an uninterrupted one).

Randomness: the step draws its noise, times and dropout from ``rng``, and the batch stream draws
its rows from the same generator, lazily. The loop checkpoints ``rng`` (and the stream's
``state_dict()`` when it has one), so a resumed run equals an uninterrupted one and the same seed
gives the same weights on the CPU.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
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
    warmup_steps: int = 0  # linear learning-rate warm-up
    lr_decay: str = "constant"  # constant | cosine (to min_lr_ratio * lr at the last step)
    min_lr_ratio: float = 0.0


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
    """Exponential moving average of a model's parameters (off when decay is 0), with warm-up.

    Update n (from 0) uses decay min(decay, (1 + n) / (10 + n)), as diffusers' `EMAModel`: without
    the warm-up a 0.999 average after 1,000 steps still holds 37% of the random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).requires_grad_(False) if decay > 0 else None

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self.model is not None:
            weight = 1.0 - self.current_decay()
            for avg, p in zip(self.model.parameters(), model.parameters()):
                if p.requires_grad:  # a frozen weight (a LoRA's base) equals its average already
                    avg.lerp_(p, weight)
            self.updates += 1

    def final(self, model: nn.Module) -> nn.Module:
        return model if self.model is None else self.model

    def state_dict(self) -> dict | None:
        return None if self.model is None else {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict | None) -> None:
        if self.model is not None:
            self.model.load_state_dict(state["model"])
            self.updates = state["updates"]


def lr_factor(step: int, loop: Loop) -> float:
    """The learning rate's multiplier at optimizer step `step` (from 0): a linear warm-up over
    `warmup_steps`, then constant or a cosine decay to `min_lr_ratio` at the last step."""
    if step < loop.warmup_steps:
        return (step + 1) / loop.warmup_steps
    if loop.lr_decay == "constant":
        return 1.0
    progress = (step - loop.warmup_steps) / max(1, loop.steps - loop.warmup_steps)
    return loop.min_lr_ratio + (1 - loop.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclasses.dataclass
class _State:
    """A run's whole training state: what a checkpoint in `work` holds and a resume restores."""

    work: Path
    run_id: str
    model: nn.Module
    opt: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    ema: EMA
    rngs: tuple[torch.Generator, ...]
    batches: Iterator[Batch]
    progress: dict = dataclasses.field(default_factory=lambda: {"step": 0, "history": []})

    def save(self) -> None:
        """Rank 0 writes the state, with every rank's generators (a list per rank)."""
        generators = [[g.get_state() for g in self.rngs]]
        if compute.world()[1] > 1:
            generators = [None] * compute.world()[1]
            dist.all_gather_object(generators, [g.get_state() for g in self.rngs])
        if compute.world()[0] == 0:
            frozen = _frozen(self.model)
            checkpoint.save_state(self.work, self.run_id, {
                "model": {k: v for k, v in self.model.state_dict().items() if k not in frozen},
                "optimizer": self.opt.state_dict(), "schedule": self.schedule.state_dict(),
                "ema": self.ema.state_dict(), "generators": generators,
                "batches": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None,
                "progress": self.progress})

    def resume(self) -> None:
        """Continue from the checkpoint in `work`, if one of this run (and this many processes) is there."""
        state = checkpoint.load_state(self.work, self.run_id)
        if state is None:
            return
        rank, processes = compute.world()
        saved = state.get("generators") or []
        if len(saved) != processes or [s.numel() for s in saved[rank]] != [g.get_state().numel() for g in self.rngs]:
            print(f"{self.work / checkpoint.STATE}: saved by another number of processes or generators (another "
                  f"device or data.stream); starting afresh")
            return
        frozen = _frozen(self.model)
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        if unexpected or set(missing) - frozen:
            raise RuntimeError(f"{self.work / checkpoint.STATE}: the model's keys differ ({sorted(unexpected)[:3]} "
                               f"saved, {sorted(set(missing) - frozen)[:3]} missing); delete it to start afresh")
        self.opt.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.ema.load_state_dict(state["ema"])
        for g, generator_state in zip(self.rngs, saved[rank], strict=True):
            g.set_state(generator_state)
        if state["batches"] is not None:
            self.batches.load_state_dict(state["batches"])
        self.progress.update(state["progress"])
        print(f"{self.work / checkpoint.STATE}: resuming at step {self.progress['step']}")


class _Window:
    """The losses of the steps since the last read; the mean over them and the processes is the only
    read of the loss (a GPU sync), and a NaN/inf there stops the stage and drops the checkpoint."""

    def __init__(self, state: _State, name: str):
        self.state, self.name, self.losses = state, name, []

    def mean(self) -> float | None:
        if not self.losses:
            return None
        total, processes = sum(self.losses), compute.world()[1]
        if processes > 1:
            dist.all_reduce(total)
            total /= processes
        if not math.isfinite(mean := float(total) / len(self.losses)):
            checkpoint.finish(self.state.work)  # resuming would replay it: the saved state goes too
            step = self.state.progress["step"]
            raise FloatingPointError(f"{self.name}: loss is {mean} in steps {step - len(self.losses)}..{step - 1}; "
                                     "stopping")
        return mean


def fit(model: nn.Module, step_fn: StepFn, batches: Iterator[Batch], loop: Loop, *,
        rng: torch.Generator | tuple[torch.Generator, ...], work: Path, run_id: str, device: torch.device,
        on_log: Callable[[int, dict], None] | None = None,
        on_sample: tuple[int, Callable[[int, nn.Module], object]] | None = None) -> Fit:
    """Train `model` for `loop.steps` optimizer steps of `step_fn` over `batches`.

    `rng`: the generator the step draws from, or a tuple whose first is that one and whose others
    the stream also draws from (all are checkpointed). `on_sample` (every, fn): validation samples,
    `fn(step, model)` by the first process before the first step and every `every` steps; it is no
    part of the recipe (the trained weights are the same without it).
    """
    rngs = rng if isinstance(rng, tuple) else (rng,)
    rank, processes = compute.world()
    model.to(device).train()
    wrapped = model if processes == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    forward = torch.compile(wrapped) if loop.compile else wrapped  # the plain module is what gets saved
    opt = torch.optim.AdamW(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay,
                            fused=device.type == "cuda")  # one kernel per step; the CPU keeps the default
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, loop))
    state = _State(work, run_id, model, opt, schedule, EMA(model, loop.ema), rngs, batches)
    state.resume()
    progress, name = state.progress, work.name.removesuffix(".partial")
    bar = tqdm(total=loop.steps, initial=progress["step"], mininterval=5.0, desc=name, unit="step", disable=rank > 0)
    tic = start = time.perf_counter()
    window, seen, total_seen = _Window(state, name), 0, 0
    every, sample = on_sample if on_sample and on_sample[0] and rank == 0 else (0, None)
    if sample and progress["step"] == 0:
        sample(0, model)
    while progress["step"] < loop.steps:
        opt.zero_grad(set_to_none=True)
        loss_sum, samples = _accumulate(wrapped, forward, step_fn, batches, rngs[0], loop.grad_accum, device)
        seen += samples
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
        opt.step()
        schedule.step()
        state.ema.update(model)
        progress["step"] += 1
        window.losses.append(loss_sum)
        bar.update(1)
        if progress["step"] % loop.log_every == 0 or progress["step"] == loop.steps:
            row = {"step": progress["step"], "loss": window.mean(), "grad_norm": float(grad_norm)}
            extra = {"samples_per_s": processes * seen / (time.perf_counter() - tic), "lr": schedule.get_last_lr()[0]}
            progress["history"].append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if on_log:
                on_log(progress["step"], row | extra)
            tic, window.losses, total_seen, seen = time.perf_counter(), [], total_seen + seen, 0
        if sample and progress["step"] % every == 0:
            sample(progress["step"], model)
        if progress["step"] % loop.checkpoint_every == 0 and progress["step"] < loop.steps:
            window.mean()
            state.save()
    bar.close()
    return Fit(state.ema.final(model).eval(), progress["history"], time.perf_counter() - start,
               processes * (total_seen + seen))


def _accumulate(wrapped: nn.Module, forward, step_fn: StepFn, batches: Iterator[Batch], rng: torch.Generator,
                accum: int, device: torch.device) -> tuple[Tensor, int]:
    """The gradients of `accum` micro-batches, each loss scaled by 1/accum: (the mean loss as a float64
    tensor on the device, the samples seen). Under DDP the gradients are averaged once, after the last."""
    loss_sum, samples = torch.zeros((), dtype=torch.float64, device=device), 0  # float64: a Python float's sum
    for micro in range(accum):
        batch = next(batches)
        sync = micro == accum - 1 or not isinstance(wrapped, DistributedDataParallel)
        with contextlib.nullcontext() if sync else wrapped.no_sync():
            with compute.autocast(device):
                loss = step_fn(forward, batch, rng)
            (loss / accum).backward()
        loss_sum += loss.detach().double() / accum
        samples += len(batch[0])
    return loss_sum, samples


def _frozen(model: nn.Module) -> set[str]:
    """The parameters that do not train (a LoRA's base weights): the run's init holds them, so a
    checkpoint leaves them out."""
    return {n for n, p in model.named_parameters() if not p.requires_grad}
