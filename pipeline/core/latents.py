"""The VAE's latent space: the one place that knows how images become latents and back.

Convention (diffusers' SD3 pipelines): an image in [-1, 1], (B, 3, H, W), encodes to
``z = (mode(q(z | x)) - shift_factor) * scaling_factor``, (B, C, H/d, W/d) with
d = 2 ** (len(block_out_channels) - 1); decoding inverts the scaling, ``vae.decode(z / scaling_factor +
shift_factor)``, and clamps to [-1, 1]. Encoding takes the posterior's mode (its mean), not a sample,
so one image always has one latent. ``scaling_factor`` and ``shift_factor`` come from the VAE's own
config (SD3: 1.5305 and 0.0609); a config without a shift (SD1/SDXL-style) means 0.

A model's *space* is what its x, edit source and velocity live in: `PIXELS` (the identity, for a model
built from a preset: the small world's default) or a VAE's `Latents` (a model from ``model.pretrained``
with a ``vae/``). Both have ``encode``/``decode``/``channels``/``downsample``; data is encoded once at
load (`pipeline.core.batches`) and samples decoded to pixels for the evaluator and grids. A model
folder's `sampling.json` names its space (`card`; `pipeline.core.checkpoint.space` reads it back).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch import Tensor


class Latents:
    """A frozen AutoencoderKL with the scaling convention above; batched, without gradients."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", batch_size: int = 16,
                 dtype: torch.dtype = torch.float32):
        self.folder = str(Path(folder))  # as given (model.pretrained), normalised: what a model's card names
        folder = Path(folder)
        if (folder / "vae" / "config.json").is_file():
            folder = folder / "vae"  # a whole pipeline folder
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: not a local diffusers VAE folder (no config.json; model.pretrained "
                                    f"or a model card's latents.vae names it)")
        self.vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, dtype=dtype)
        self.vae.to(device).eval().requires_grad_(False)
        config = self.vae.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(config.shift_factor or 0.0)
        self.channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.device, self.dtype, self.batch_size = torch.device(device), dtype, batch_size

    def card(self) -> dict:
        """What a model folder's `sampling.json` records of this space."""
        return {"vae": self.folder, "channels": self.channels, "downsample": self.downsample,
                "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor}

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents (B, C, H/d, W/d) float32, on the images' device."""
        if images.shape[-1] % self.downsample or images.shape[-2] % self.downsample:
            raise ValueError(f"world.resolution: images of {tuple(images.shape[-2:])} pixels do not map to latents of "
                             f"{self.folder}'s VAE, which downsamples by {self.downsample}")
        return self._batched(images, self._encode)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, C, h, w) -> images (B, 3, h*d, w*d) float32 in [-1, 1], on the latents' device."""
        if latents.shape[1] != self.channels:
            raise ValueError(f"latents: got {latents.shape[1]} channels, the VAE has {self.channels}")
        return self._batched(latents, self._decode)

    def _encode(self, x: Tensor) -> Tensor:
        z = self.vae.encode(x).latent_dist.mode()  # (b, C, h, w)
        return (z - self.shift_factor) * self.scaling_factor

    def _decode(self, z: Tensor) -> Tensor:
        x = self.vae.decode(z / self.scaling_factor + self.shift_factor).sample  # (b, 3, H, W)
        return x.clamp(-1, 1)

    def _batched(self, x: Tensor, fn) -> Tensor:
        """fn over chunks of `batch_size` on the VAE's device; the result back on x's device as float32."""
        if len(x) == 0:
            raise ValueError("latents: empty batch")
        out = [fn(chunk.to(self.device, self.dtype)).float().to(x.device) for chunk in x.split(self.batch_size)]
        return torch.cat(out)


class Pixels:
    """The identity space: a model that sees the images themselves (x, source and v in [-1, 1] pixels)."""

    channels, downsample = 3, 1

    def card(self) -> None:
        return None  # a pixel model's card has no `latents` entry

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, x: Tensor) -> Tensor:
        return x


PIXELS = Pixels()
Space = Pixels | Latents


def space(folder: str | Path, device: str | torch.device = "cpu") -> Space:
    """The space of a model built from `folder` (``model.pretrained``): its VAE's latents when it is a
    diffusers pipeline folder with a ``vae/``; pixels for a bare transformer folder or "" (a preset)."""
    if folder and (Path(folder) / "vae" / "config.json").is_file():
        return Latents(folder, device)
    return PIXELS


def unit(images: Tensor) -> Tensor:
    """Stored images as the model's input: uint8 pixels scaled to [-1, 1]; latents (float) as they are."""
    return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images


def encode_pixels(pixels: Tensor, space: Space, rows: Tensor | None = None) -> Tensor:
    """uint8 (N, 3, H, W) -> the space's float latents (N, C, H/d, W/d) of every row, or of `rows` (else 0)."""
    if rows is None:
        return space.encode(unit(pixels))
    n, _, h, w = pixels.shape
    out = torch.zeros(n, space.channels, h // space.downsample, w // space.downsample)
    if rows.any():
        out[rows] = space.encode(unit(pixels[rows]))
    return out


def encode_records(records: Sequence, space: Space, chunk: int = 256) -> tuple[dict, list[str], np.ndarray, np.ndarray]:
    """Curated `records` (`pipeline.data.shards.Record`) encoded by `space`'s VAE, `chunk` at a time:
    (its card, their keys, image and source latents float16 (N, C, h, w)), what `embed` stores
    (`pipeline.data.embeddings.write`)."""
    images, sources = [], []
    for part in (records[i:i + chunk] for i in range(0, len(records), chunk)):
        image = torch.from_numpy(np.stack([r.image for r in part])).permute(0, 3, 1, 2)
        source = np.stack([r.source if r.source is not None else np.zeros_like(r.image) for r in part])
        source, has_source = torch.from_numpy(source).permute(0, 3, 1, 2), torch.tensor([r.source is not None for r in part])
        images.append(encode_pixels(image, space).half().numpy())
        sources.append(encode_pixels(source, space, has_source).half().numpy())
    return space.card(), [r.key for r in records], np.concatenate(images), np.concatenate(sources)
