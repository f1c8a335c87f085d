"""The one training loop every training stage uses, and the flow-matching (SFT) objective.

`fit` runs AdamW with gradient clipping, optional EMA, bf16 autocast on CUDA, a NaN/inf guard
(the stage fails instead of saving a broken model), a progress bar, and a checkpoint every
`checkpoint_every` steps in a work folder beside the output. A killed stage resumes from it when the
run's fingerprint (its config and inputs) is unchanged. All randomness (batches, noise, t, dropout)
comes from one seeded generator that is checkpointed too, so a resumed run equals an uninterrupted
one and the same seed gives the same weights on CPU.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from pipeline import flow
from pipeline.data import TensorSet

LossFn = Callable[[nn.Module, torch.Generator], Tensor]
CHECKPOINT = "checkpoint.pt"


def device_for(name: str) -> torch.device:
    """`compute.device`: auto picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"compute.device: expected auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def setup_compute(compute) -> torch.device:
    """Apply `compute` (threads, device) and return the device."""
    if compute.threads > 0:
        torch.set_num_threads(compute.threads)
    return device_for(compute.device)


def fingerprint(*parts) -> str:
    """A short hash of JSON-able run inputs; a checkpoint only resumes the run it came from."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flow_matching_loss(data: TensorSet, train_cfg, null: tuple[Tensor, Tensor], device: torch.device,
                       t_sampling: str | None = None) -> LossFn:
    """The SFT objective: velocity MSE on forward-noised data, with condition dropout for CFG.

    t is drawn by `t_sampling` (default `train.t_sampling`, the from-scratch base's density).
    """
    t_sampling = t_sampling or train_cfg.t_sampling
    null_text, null_pooled = null

    def loss(model: nn.Module, gen: torch.Generator) -> Tensor:
        b = train_cfg.batch_size
        x, cond = data.batch(torch.randint(len(data), (b,), generator=gen))  # (B, 3, H, W)
        noise = torch.randn(x.shape, generator=gen)
        t = flow.sample_t(b, t_sampling, generator=gen)  # (B,)
        drop_text = torch.rand(b, generator=gen) < train_cfg.drop_text  # (B,)
        drop_source = torch.rand(b, generator=gen) < train_cfg.drop_source
        cond.text[drop_text] = null_text  # the null condition CFG needs at sampling time
        cond.pooled[drop_text] = null_pooled
        cond.source[drop_source] = 0.0
        v = model(flow.interpolate(x, noise, t).to(device), t.to(device), cond.to(device))
        return F.mse_loss(v.float(), flow.target_velocity(x, noise).to(device))

    return loss


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


def fit(model: nn.Module, loss_fn: LossFn, train_cfg, *, steps: int, lr: float, work: Path, run_id: str,
        device: torch.device, on_log: Callable[[int, dict], None] | None = None) -> tuple[nn.Module, list[dict]]:
    """Train `model` for `steps` steps; return the final (EMA) model and the logged history."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=train_cfg.weight_decay)
    ema = EMA(model, train_cfg.ema)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    state = {"step": 0, "history": []}
    _resume(work / CHECKPOINT, run_id, model, opt, ema, gen, state)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    bar = tqdm(total=steps, initial=state["step"], mininterval=5.0, desc=work.name.removesuffix(".partial"), unit="step")
    tic, window = time.perf_counter(), []
    while state["step"] < steps:
        with autocast:
            loss = loss_fn(model, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{work.name}: loss is {loss.item()} at step {state['step']}; stopping")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        opt.step()
        ema.update(model)
        state["step"] += 1
        window.append(loss.item())
        bar.update(1)
        if state["step"] % train_cfg.log_every == 0 or state["step"] == steps:
            row = {"step": state["step"], "loss": sum(window) / len(window), "grad_norm": float(grad_norm),
                   "samples_per_s": len(window) * train_cfg.batch_size / (time.perf_counter() - tic)}
            state["history"].append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if on_log:
                on_log(state["step"], row)
            tic, window = time.perf_counter(), []
        if state["step"] % train_cfg.checkpoint_every == 0 and state["step"] < steps:
            _save(work / CHECKPOINT, run_id, model, opt, ema, gen, state)
    bar.close()
    return ema.final(model).eval(), state["history"]


def _save(path: Path, run_id: str, model, opt, ema: EMA, gen, state) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"run_id": run_id, "model": model.state_dict(), "optimizer": opt.state_dict(),
               "ema": None if ema.model is None else ema.model.state_dict(), "generator": gen.get_state(),
               "state": state}
    torch.save(payload, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)  # a kill mid-save leaves the previous checkpoint


def _resume(path: Path, run_id: str, model, opt, ema: EMA, gen, state) -> None:
    if not path.exists():
        return
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload["run_id"] != run_id:
        print(f"{path}: from another configuration; starting afresh")
        return
    model.load_state_dict(payload["model"])
    opt.load_state_dict(payload["optimizer"])
    if ema.model is not None:
        ema.model.load_state_dict(payload["ema"])
    gen.set_state(payload["generator"])
    state.update(payload["state"])
    print(f"{path}: resuming at step {state['step']}")


def work_dir(out: Path) -> Path:
    """Where a stage checkpoints: beside its output, which DVC deletes before a stage runs."""
    return out.with_name(out.name + ".partial")


def finish(work: Path) -> None:
    """Drop the checkpoints once the final output is in place."""
    shutil.rmtree(work, ignore_errors=True)


# --- the SFT models: base, experts, joint ------------------------------------------------------

SFT_TASK_BUCKETS = ["t2i", "local_edit", "global_edit"]


def sft_plan(cfg, name: str) -> tuple[list[str], int, str]:
    """(buckets, steps, t sampling) of the SFT model `name`: base, an expert name, or joint."""
    if name == "base":
        return ["t2i"], cfg.train.base_steps, cfg.train.t_sampling
    tune = cfg.train.finetune_t_sampling  # experts and joint start from base
    if name in cfg.experts:
        return cfg.experts[name].buckets, cfg.experts[name].steps, tune
    if name == "joint":  # the multi-task SFT baseline on every routed bucket
        return SFT_TASK_BUCKETS + (["realism"] if cfg.fields.realism else []), cfg.train.joint_steps, tune
    raise ValueError(f"train: unknown model {name!r}; expected base, joint or one of experts {sorted(cfg.experts)}")


def train_sft(cfg, name: str, shards: Path, out: Path, init: Path | None, on_log=None):
    """Train the SFT model `name` (from `init`, or from scratch) and save it to `out`."""
    from pipeline import backbone, data
    from pipeline.sample import preview

    device = setup_compute(cfg.compute)
    buckets, steps, t_sampling = sft_plan(cfg, name)
    train_set = data.load_tensors(shards, buckets, "train")
    null = data.read_null(shards)
    model = backbone.load(init) if init else new_model(cfg, train_set.text.shape[-1])
    loss_fn = flow_matching_loss(train_set, cfg.train, null, device, t_sampling)
    if cfg.compute.compile:  # the GPU path; the uncompiled module is what gets saved
        compiled = torch.compile(model.to(device))
        sft_loss, loss_fn = loss_fn, lambda _model, gen: sft_loss(compiled, gen)
    run_id = fingerprint(name, buckets, steps, cfg.train, cfg.model, str(init), _shard_digest(shards, buckets))
    work = work_dir(out)
    model, history = fit(model, loss_fn, cfg.train, steps=steps, lr=cfg.train.lr, work=work, run_id=run_id,
                         device=device, on_log=on_log)
    meta = {"name": name, "buckets": buckets, "steps": steps, "init": str(init) if init else None}
    save_model(model, out, history, meta, preview(model, shards, null, cfg.eval, cfg.model.shift))
    finish(work)
    return model, history


def new_model(cfg, text_dim: int):
    """A backbone from `model.pretrained` or, when that is empty, from the size registry."""
    from pipeline import backbone

    if cfg.model.pretrained:
        return backbone.load_pretrained(cfg.model.pretrained, text_dim)
    torch.manual_seed(cfg.train.seed)  # initial weights are part of "same seed, same result"
    return backbone.build(cfg.model.size, cfg.model.patch_size, cfg.world.size, text_dim)


def save_model(model, out: Path, history: list[dict], meta: dict, samples) -> None:
    """Write the checkpoint folder atomically: weights + config (diffusers), log, sample grid."""
    from PIL import Image

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    (tmp / "train_log.json").write_text(json.dumps({"meta": meta, "history": history}, indent=1))
    Image.fromarray(samples).save(tmp / "samples.png")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _shard_digest(shards: Path, buckets: list[str]) -> list[tuple[str, int]]:
    return [(p.name, p.stat().st_size) for b in buckets for p in sorted((shards / b).glob("*.tar"))]
