"""Compute set-up: the device, torch's threads, the autocast a training step runs under, and
multi-process training.

`compute.device` is validated by the config (auto | cpu | cuda); auto picks CUDA when present.
On CUDA, steps run under bf16 autocast; on the CPU in float32 (bf16 is slower there and would
change the results the tests pin).

`compute.nproc` > 1 runs a training stage as that many processes: `relaunch` re-executes the
stage's module under torchrun (`python -m torch.distributed.run --standalone`), each process
joins the group in `setup` (NCCL on CUDA, one GPU per process; gloo on the CPU), and
`pipeline.train.loop.fit` wraps the model in DistributedDataParallel. Only rank 0 writes
(`is_main`): the model folder, checkpoints, metrics and the MLflow run.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys

import torch
import torch.distributed as dist


def device_for(name: str) -> torch.device:
    """The torch device of `compute.device` (this process's GPU under torchrun)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def setup(compute) -> torch.device:
    """Apply the `compute` section (threads; the process group under torchrun) and return the device."""
    if compute.threads > 0:
        torch.set_num_threads(compute.threads)
    device = device_for(compute.device)
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            if device.index >= torch.cuda.device_count():
                raise ValueError(f"compute.nproc: {os.environ['WORLD_SIZE']} processes, but this machine has "
                                 f"{torch.cuda.device_count()} GPU(s): one each")
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    return device


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes: rank 0 (of torchrun's environment, before or after `setup`)."""
    return int(os.environ.get("RANK", "0")) == 0


def relaunch(compute) -> None:
    """Replace this process by torchrun running this stage as `compute.nproc` processes (a signal to
    the stage then reaches them all); a no-op for one process or inside torchrun. Call it first in
    a training stage's `main`, which must run as a module (`python -m stages.<name>`, as dvc.yaml does)."""
    if compute.nproc <= 1 or "LOCAL_RANK" in os.environ:
        return
    spec = sys.modules["__main__"].__spec__
    if spec is None:
        raise SystemExit(f"compute.nproc = {compute.nproc}: run the stage as a module (python -m stages.<name>)")
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc_per_node={compute.nproc}", "-m", spec.name, *sys.argv[1:]])


def per_rank(batch_size: int, key: str) -> int:
    """This process's share of a global batch of `batch_size` (the key names it in the error)."""
    _, size = world()
    if batch_size % size:
        raise ValueError(f"{key}: {batch_size} does not split over compute.nproc = {size} processes")
    return batch_size // size


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
