"""Sampling images from a model: fixed-seed noise, optional CFG, the Euler sampler, and grids."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.core import flow
from pipeline.core.fields import Cond, GuidedField


def noise_like(n: int, shape: tuple[int, ...], seed: int) -> Tensor:
    """(n, *shape) standard normal noise, the same for the same seed whatever the device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=generator)


@torch.no_grad()
def generate(model, cond: Cond, *, steps: int, shift: float, seed: int, guidance: float = 1.0,
             null: tuple[Tensor, Tensor] | None = None, image_shape: tuple[int, ...] = (3, 32, 32),
             device: torch.device | None = None) -> Tensor:
    """Images (B, C, H, W) in [-1, 1] from `steps` Euler steps of a model or any field.

    guidance != 1 wraps it in CFG and needs the null text; the device defaults to the model's.
    """
    field = model  # called under no_grad; not ModelField, which would freeze a model still training
    if guidance != 1.0:
        if null is None:
            raise ValueError("generate: guidance != 1 needs the null text embedding")
        field = GuidedField(field, guidance, *null)
    device = device or (next(model.parameters()).device if isinstance(model, nn.Module) else torch.device("cpu"))
    noise = noise_like(len(cond), image_shape, seed).to(device)
    grid = flow.time_grid(steps, shift)
    return flow.euler_sample(field, noise, cond.to(device), grid).clamp(-1, 1)


def grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Tile rows of (N, H, W, 3) uint8 images into one (R*(H+pad), N*(W+pad), 3) uint8 image."""
    n, h, w, _ = rows[0].shape
    out = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y:y + h, x:x + w] = image
    return out
