"""Sampling images from a model: fixed-seed noise, optional CFG, the Euler sampler, and labelled grids."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
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
             device: torch.device | None = None, image_guidance: float = 1.0, noise: Tensor | None = None) -> Tensor:
    """Images (B, C, H, W) in [-1, 1] from `steps` Euler steps of a model or any field.

    guidance != 1 wraps it in CFG and needs the null text; image_guidance != 1 guides edits by their
    source too (InstructPix2Pix's two scales, `GuidedField`). The device defaults to the model's.
    `noise` (B, C, H, W), when given, is the starting noise instead of `seed`'s (a slice of a larger
    set's, so that sampling it in parts gives the same images).
    """
    field = model  # called under no_grad; not ModelField, which would freeze a model still training
    if guidance != 1.0 or (image_guidance != 1.0 and cond.source is not None):
        if null is None:
            raise ValueError("generate: guidance != 1 needs the null text embedding")
        field = GuidedField(field, guidance, *null, image_scale=image_guidance)
    device = device or (next(model.parameters()).device if isinstance(model, nn.Module) else torch.device("cpu"))
    noise = (noise_like(len(cond), image_shape, seed) if noise is None else noise).to(device)
    grid = flow.time_grid(steps, shift)
    return flow.euler_sample(field, noise, cond.to(device), grid).clamp(-1, 1)


@dataclass
class Panel:
    """One labelled block of a sample grid: a title, rows of images (columns aligned), a caption per column."""

    title: str
    rows: list[np.ndarray]  # each (N, H, W, 3) uint8, e.g. [sources, outputs]
    captions: list[str]  # N prompts or instructions


def labelled_grid(panels: list[Panel], scale: int = 3, pad: int = 4) -> Image.Image:
    """The panels stacked: each a title, its rows of numbered tiles (nearest-upscaled by `scale`)
    and the numbered captions beneath, so a person can check each output against its prompt."""
    font, bold = ImageFont.load_default(size=11), ImageFont.load_default(size=13)
    n, h, w, _ = panels[0].rows[0].shape
    tile_h, tile_w = h * scale, w * scale
    width = n * (tile_w + pad) + pad
    chars = max(20, int(width / 6))  # the default font is ~5-6 px a character at size 11
    layouts = []
    for panel in panels:
        legend = [line for i, text in enumerate(panel.captions, 1)
                  for line in textwrap.wrap(f"{i}. {text}", chars, subsequent_indent="    ")]
        layouts.append((panel, legend, 20 + len(panel.rows) * (tile_h + pad) + 14 * len(legend) + 2 * pad))
    image = Image.new("RGB", (width, sum(height for *_, height in layouts)), "white")
    draw, y = ImageDraw.Draw(image), 0
    for panel, legend, height in layouts:
        draw.text((pad, y + 3), panel.title, fill="black", font=bold)
        top = y + 20
        for r, row in enumerate(panel.rows):
            for c, tile in enumerate(row):
                x = pad + c * (tile_w + pad)
                image.paste(Image.fromarray(tile).resize((tile_w, tile_h), Image.Resampling.NEAREST), (x, top))
                if r == 0:  # the tile's number, on a white tab so it reads on any image
                    draw.rectangle((x, top, x + 7 * len(str(c + 1)) + 3, top + 13), fill="white")
                    draw.text((x + 2, top + 1), str(c + 1), fill="black", font=font)
            top += tile_h + pad
        for line in legend:
            draw.text((pad, top), line, fill="black", font=font)
            top += 14
        y += height
    return image
