"""Compute set-up: the device, torch's threads, and the autocast a training step runs under.

`compute.device` is validated by the config (auto | cpu | cuda); auto picks CUDA when present.
On CUDA, steps run under bf16 autocast; on the CPU in float32 (bf16 is slower there and would
change the results the tests pin).
"""
from __future__ import annotations

import contextlib

import torch


def device_for(name: str) -> torch.device:
    """The torch device of `compute.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup(compute) -> torch.device:
    """Apply the `compute` section (threads) and return its device."""
    if compute.threads > 0:
        torch.set_num_threads(compute.threads)
    return device_for(compute.device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
