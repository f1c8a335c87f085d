"""Compute set-up: the device, torch's threads, the autocast a training step runs under, and
multi-process training.

`compute.device` is validated by the config (auto | cpu | cuda); auto picks CUDA when present.
On CUDA, steps run under bf16 autocast; on the CPU in float32 (bf16 is slower there and would
change the results the tests pin).

`compute.nproc` > 1 runs a training stage as that many processes: `relaunch` re-executes the
stage's module under torchrun (`python -m torch.distributed.run --standalone`), each process
joins the group in `setup` (NCCL on CUDA, one GPU per process; gloo on the CPU; a timeout of
`PG_TIMEOUT`), and `pipeline.train.loop.fit` wraps the model in DistributedDataParallel. Only
rank 0 writes (`is_main`): the model folder, checkpoints, metrics and the MLflow run.

Several nodes: the same stage command on every node, with torchrun's own environment naming the
group: `PET_NNODES` and either `PET_RDZV_ENDPOINT=host:port` (c10d rendezvous) or
`PET_MASTER_ADDR`, `PET_MASTER_PORT` and each node's `PET_NODE_RANK` (static). `--standalone`,
which pins the rendezvous to this host, is then left out. The machine-specific part stays out of
params.yaml, so it never changes a stage's DVC hash (README "Scale").
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import os
import sys
import warnings

import torch
import torch.distributed as dist

# The process group's collective timeout: longer than NCCL's default 10 minutes, which a long
# rank-0 save or a first compile on one rank can outlast while the others wait at the next collective.
PG_TIMEOUT = datetime.timedelta(minutes=60)
MIN_GPU_BATCH = 16  # a per-GPU micro-batch below this leaves the card mostly idle (a warning)


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
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=PG_TIMEOUT)
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


def nodes() -> int:
    """The nodes torchrun's environment asks for (`PET_NNODES`, its `--nnodes`: N or MIN:MAX); 1 by default."""
    value = os.environ.get("PET_NNODES", "1")
    try:
        return max(int(v) for v in value.split(":"))
    except ValueError:
        raise SystemExit(f"PET_NNODES={value!r}: a number of nodes, N or MIN:MAX") from None


def launcher(compute, module: str, argv: list[str]) -> list[str]:
    """torchrun's command line for `module argv` as `compute.nproc` processes on each of `nodes()`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={compute.nproc}"]
    if nodes() == 1:
        return [*cmd, "--standalone", "-m", module, *argv]
    if os.environ.get("PET_RDZV_ENDPOINT"):  # c10d unless the environment names another backend
        cmd += [] if os.environ.get("PET_RDZV_BACKEND") else ["--rdzv_backend=c10d"]
    elif not (os.environ.get("PET_MASTER_ADDR") and os.environ.get("PET_MASTER_PORT")):
        raise SystemExit(f"PET_NNODES={os.environ['PET_NNODES']}: name the group with PET_RDZV_ENDPOINT=host:port "
                         "(c10d), or PET_MASTER_ADDR, PET_MASTER_PORT and PET_NODE_RANK (static)")
    if not os.environ.get("PET_RDZV_ID"):  # every node runs the same stage: its command is the group's name
        cmd.append("--rdzv_id=" + hashlib.sha256(" ".join([module, *argv]).encode()).hexdigest()[:16])
    return [*cmd, "-m", module, *argv]


def relaunch(compute) -> None:
    """Replace this process by torchrun running this stage as `compute.nproc` processes on each of
    `nodes()` (a signal to the stage then reaches them all); a no-op for one process on one node or
    inside torchrun. Call it first in a training stage's `main`, which must run as a module
    (`python -m stages.<name>`, as dvc.yaml does)."""
    if (compute.nproc <= 1 and nodes() == 1) or "LOCAL_RANK" in os.environ:
        return
    spec = sys.modules["__main__"].__spec__
    if spec is None:
        raise SystemExit(f"compute.nproc = {compute.nproc}: run the stage as a module (python -m stages.<name>)")
    os.execv(sys.executable, launcher(compute, spec.name, sys.argv[1:]))


def per_rank(batch_size: int, key: str, device: torch.device = torch.device("cpu")) -> int:
    """This process's share of a global batch of `batch_size` (the key names it in the error and in
    the warning when a GPU's share is below `MIN_GPU_BATCH`)."""
    _, size = world()
    if batch_size % size:
        raise ValueError(f"{key}: {batch_size} does not split over {size} processes (compute.nproc x nodes)")
    share = batch_size // size
    if device.type == "cuda" and share < MIN_GPU_BATCH:
        warnings.warn(f"{key}: {batch_size} over {size} processes is {share} a GPU, below {MIN_GPU_BATCH}: "
                      "the GPUs will wait on their launches more than they compute", stacklevel=2)
    return share


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
