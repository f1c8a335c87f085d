"""The prompts' cached text embeddings: one store per curated dataset, written by the `embed` stage.

Shards hold only bytes that are a pure function of params (PNG, JSON), so they are identical on
every machine and a DVC remote can serve them to anyone. Text embeddings are floats from a
network, and CPU kernels are not bit-stable across processors, so they live apart, here: a
colleague who pulls the shards re-embeds in a minute (or pulls these too) instead of every
downstream stage rerunning on a spurious change.

A store is a folder: `embeddings.npz` with, for every distinct prompt of the manifest (sorted),
`text` float16 (N, max_tokens, D) token embeddings (padding zeroed) and `pooled` float16 (N, D),
plus the empty prompt's (`null_text`, `null_pooled`: the null condition of CFG); and
`encoder.json` naming the encoder, its token length and width (and, when it differs from that, the
pooled width: `pooled_dim`, SD3's encoders), so models trained on it can say what their text input is.

For a model of a VAE's latent space (``model.pretrained`` with a ``vae/``) the store also holds every
curated image encoded once by that VAE, the other floats from a network: `latents.json` (the VAE's
card, `pipeline.core.latents.Latents.card`, and the record keys in row order) with
`latents_image.npy` and `latents_source.npy`, float16 (N, C, h, w) (a T2I row's source: zeros),
memory-mapped at load. Every stage then reads its latents here instead of running the VAE over its
images (`pipeline.core.batches`); a store without them (pixel models: the default) is as before.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.data.outputs import atomic_dir

ARRAYS = "embeddings.npz"
INFO = "encoder.json"
LATENTS = "latents.json"
LATENT_ARRAYS = {"image": "latents_image.npy", "source": "latents_source.npy"}


@dataclass
class StoredLatents:
    """Every curated record's VAE latents, as `write` stores them: look records up by key."""

    card: dict  # the VAE's (`Latents.card`): which space these are latents of
    row: dict[str, int]  # record key -> row
    image: np.ndarray  # (N, C, h, w) float16, memory-mapped
    source: np.ndarray

    def lookup(self, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, source) float32 (B, C, h, w) of the records `keys`; a key the store lacks is an error."""
        try:
            rows = [self.row[k] for k in keys]
        except KeyError as err:
            raise KeyError(f"embeddings: no latents of the record {err.args[0]!r}; rerun `dvc repro embed`") from None
        return (torch.from_numpy(np.asarray(self.image[rows], np.float32)),
                torch.from_numpy(np.asarray(self.source[rows], np.float32)))


def write(prompts, encoder, out: Path, info: dict, latents: tuple[dict, list[str], np.ndarray, np.ndarray] | None = None
          ) -> int:
    """Embed the distinct `prompts` and the null prompt with `encoder`; write the store atomically, with
    `latents` = (the VAE's card, record keys, image and source latents) when given."""
    unique = sorted(set(prompts))
    text, pooled = encoder.encode(unique)
    null_text, null_pooled = encoder.null()
    with atomic_dir(out) as tmp:
        np.savez(tmp / ARRAYS, prompts=np.array(unique, dtype=str), text=text.astype(np.float16),
                 pooled=pooled.astype(np.float16), null_text=null_text.astype(np.float16),
                 null_pooled=null_pooled.astype(np.float16))
        dims = {"dim": int(text.shape[-1])}
        if pooled.shape[-1] != text.shape[-1]:  # SD3's encoders (a MiniLM store's info stays as it was)
            dims["pooled_dim"] = int(pooled.shape[-1])
        (tmp / INFO).write_text(json.dumps(info | dims, indent=1, sort_keys=True) + "\n")
        if latents is not None:
            card, keys, image, source = latents
            if not len(keys) == len(image) == len(source):
                raise ValueError(f"embeddings: {len(keys)} keys for {len(image)} image and {len(source)} source latents")
            for name, array in (("image", image), ("source", source)):
                np.save(tmp / LATENT_ARRAYS[name], np.asarray(array, np.float16), allow_pickle=False)
            (tmp / LATENTS).write_text(json.dumps({"space": card, "keys": list(keys)}, sort_keys=True) + "\n")
    return len(unique)


@dataclass
class Embeddings:
    """A loaded store: look prompts up, get the null condition."""

    index: dict[str, int]
    text: np.ndarray  # (N, L, D) float16
    pooled: np.ndarray  # (N, Dp) float16 (Dp = D but for SD3's encoders)
    null_text: np.ndarray  # (L, D) float16
    null_pooled: np.ndarray  # (Dp,) float16
    info: dict  # encoder, max_tokens, dim (pooled_dim; the pretrained folder)
    latents: StoredLatents | None = None  # a latent-space model's curated images, encoded once

    @classmethod
    def load(cls, folder: str | Path) -> Embeddings:
        folder = Path(folder)
        if not (folder / ARRAYS).is_file() or not (folder / INFO).is_file():
            raise FileNotFoundError(f"{folder}: not an embeddings store (run `dvc repro embed`)")
        with np.load(folder / ARRAYS) as z:
            arrays = {k: z[k] for k in z.files}
        return cls({p: i for i, p in enumerate(arrays["prompts"].tolist())}, arrays["text"], arrays["pooled"],
                   arrays["null_text"], arrays["null_pooled"], json.loads((folder / INFO).read_text()),
                   _stored_latents(folder))

    def lookup(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(text (B, L, D), pooled (B, D)) float16 of prompts the store holds; a missing one is an error."""
        try:
            rows = [self.index[p] for p in prompts]
        except KeyError as err:
            raise KeyError(f"embeddings: no embedding of the prompt {err.args[0]!r}; rerun `dvc repro embed`") from None
        return self.text[rows], self.pooled[rows]

    def latents_of(self, card: dict) -> StoredLatents | None:
        """The stored latents when they are of the space `card` names (the same VAE folder and scaling)."""
        return self.latents if self.latents is not None and self.latents.card == card else None

    def null(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The null text (L, D) and pooled (D,) embeddings, as float32 tensors."""
        return torch.from_numpy(self.null_text).float(), torch.from_numpy(self.null_pooled).float()


def _stored_latents(folder: Path) -> StoredLatents | None:
    if not (folder / LATENTS).is_file():
        return None
    meta = json.loads((folder / LATENTS).read_text())
    image, source = (np.load(folder / LATENT_ARRAYS[n], mmap_mode="r", allow_pickle=False) for n in ("image", "source"))
    return StoredLatents(meta["space"], {k: i for i, k in enumerate(meta["keys"])}, image, source)
