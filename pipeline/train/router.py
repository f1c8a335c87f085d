"""Training the task router (`pipeline.core.router`) from a seeded ``router.label_fraction`` of the
training prompts, the only task labels it may see."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.core.batches import Curated, TensorSet
from pipeline.core.router import Router
from pipeline.data import world

BATCH = 256
WEIGHT_DECAY = 1e-2


def labelled_subset(n: int, label_fraction: float, seed: int) -> Tensor:
    """The sorted indices of the round(label_fraction * n) samples whose labels may be used (seeded)."""
    if not 0 < label_fraction <= 1:
        raise ValueError(f"router.label_fraction: expected a value in (0, 1], got {label_fraction}")
    count = round(label_fraction * n)
    if count < 1:
        raise ValueError(f"router.label_fraction: {label_fraction} of {n} samples labels none of them")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:count].sort().values


def train_router(train: TensorSet, label_fraction: float, steps: int, lr: float, seed: int) -> tuple[Router, dict]:
    """Train a router on the labelled fraction of ``train``; the other samples stay unused."""
    labelled = labelled_subset(len(train.task), label_fraction, seed)
    pooled = train.pooled[labelled].float()  # (N_l, D)
    task = train.task[labelled]  # (N_l,)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights without touching global RNG
        torch.manual_seed(seed)
        router = Router(pooled.shape[-1])
    opt = torch.optim.AdamW(router.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    router.train()
    for _ in range(steps):
        batch = torch.randint(len(task), (min(BATCH, len(task)),), generator=generator)
        loss = F.cross_entropy(router(pooled[batch]), task[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    router.eval()
    accuracy = (router.predict(pooled) == task).float().mean().item()
    return router, {"labelled": len(labelled), "train_accuracy": accuracy}


def train_on(data: Curated, params, out: Path) -> dict:
    """Train the router (`params`: the ``router`` section) on the task buckets, save it, return its metrics."""
    tasks = list(world.TASKS)
    model, metrics = train_router(data.tensors(tasks, "train"), params.label_fraction, params.steps, params.lr,
                                  params.seed)
    metrics["test_accuracy"] = model.accuracy(data.tensors(tasks, "test"))
    model.save(out)
    return metrics
