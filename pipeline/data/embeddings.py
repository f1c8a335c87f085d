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


def write(prompts, encoder, out: Path, info: dict) -> int:
    """Embed the distinct `prompts` and the null prompt with `encoder`; write the store atomically."""
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

    @classmethod
    def load(cls, folder: str | Path) -> Embeddings:
        folder = Path(folder)
        if not (folder / ARRAYS).is_file() or not (folder / INFO).is_file():
            raise FileNotFoundError(f"{folder}: not an embeddings store (run `dvc repro embed`)")
        with np.load(folder / ARRAYS) as z:
            arrays = {k: z[k] for k in z.files}
        return cls({p: i for i, p in enumerate(arrays["prompts"].tolist())}, arrays["text"], arrays["pooled"],
                   arrays["null_text"], arrays["null_pooled"], json.loads((folder / INFO).read_text()))

    def lookup(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(text (B, L, D), pooled (B, D)) float16 of prompts the store holds; a missing one is an error."""
        try:
            rows = [self.index[p] for p in prompts]
        except KeyError as err:
            raise KeyError(f"embeddings: no embedding of the prompt {err.args[0]!r}; rerun `dvc repro embed`") from None
        return self.text[rows], self.pooled[rows]

    def null(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The null text (L, D) and pooled (D,) embeddings, as float32 tensors."""
        return torch.from_numpy(self.null_text).float(), torch.from_numpy(self.null_pooled).float()
