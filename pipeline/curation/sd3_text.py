"""The SD3-family text encoders of a local diffusers folder: CLIP-L, CLIP-G and (optionally) T5.

Same interface as `pipeline.curation.text.TextEncoder`, and exactly what diffusers'
``StableDiffusion3Pipeline.encode_prompt`` gives for one image per prompt, without CFG:

- `text` (CLIP_TOKENS + max_tokens, dim): the penultimate hidden states of CLIP-L (text_encoder) and
  CLIP-G (text_encoder_2), concatenated on channels and zero-padded to T5's width, followed along
  the sequence by T5's (text_encoder_3) last hidden states. CLIP_TOKENS is the first CLIP
  tokenizer's model_max_length (77); max_tokens is T5's length (diffusers' max_sequence_length).
  dim = T5's d_model (4096 for SD3); without a T5 the T5 part is zeros of width the transformer's
  joint_attention_dim, as diffusers does when text_encoder_3 is None.
- `pooled` (pooled_dim,): CLIP-L's and CLIP-G's projected text_embeds, concatenated (768 + 1280 = 2048
  for SD3), so pooled_dim differs from dim.

Unlike `TextEncoder`, padding positions are *not* zeroed: SD3 models were trained on diffusers'
embeddings, in which both CLIPs and T5 run without an attention mask and every position carries a
state. The empty prompt "" is the null text of CFG, as diffusers' default negative prompt.

`load_encoder` is the one place ``text.encoder`` becomes an encoder: ``pretrained`` = these, of
``model.pretrained``'s folder; anything else a `pipeline.curation.text.TextEncoder` (MiniLM by default).
(It lives here, not in `text`, so that what imports `text` alone does not depend on this module.)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline.curation.text import CachedEncoder, TextEncoder

PRETRAINED = "pretrained"  # text.encoder: the SD3-family model's own encoders, of model.pretrained


def load_encoder(name: str, max_tokens: int, batch_size: int = 256, pretrained: str | Path = "",
                 device: str | torch.device = "cpu") -> TextEncoder | SD3TextEncoder:
    """The encoder ``text.encoder`` names: for ``pretrained`` the SD3 encoders of the folder `pretrained`."""
    if name != PRETRAINED:
        return TextEncoder(name, max_tokens, batch_size)
    if not pretrained:
        raise ValueError("text.encoder: 'pretrained' needs model.pretrained, the SD3 folder whose encoders to use")
    # bf16 on a GPU: T5-XXL alone is 4.8B parameters (19 GB in float32); the embeddings are stored in float16
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return SD3TextEncoder(pretrained, max_tokens, batch_size, device, dtype)


class SD3TextEncoder(CachedEncoder):
    """The frozen CLIP-L + CLIP-G (+ T5) encoders of `folder`, with an in-memory cache keyed by prompt."""

    def __init__(self, folder: str | Path, max_tokens: int = 256, batch_size: int = 64,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        folder = Path(folder)
        if not (folder / "text_encoder" / "config.json").is_file():
            raise FileNotFoundError(f"text.encoder: pretrained: model.pretrained {folder} is not a local SD3 diffusers "
                                    f"folder (no text_encoder/config.json)")

        def load(cls, name):
            return cls.from_pretrained(folder / name, local_files_only=True, dtype=dtype).to(device).eval().requires_grad_(False)

        def tokenizer(name):
            return AutoTokenizer.from_pretrained(folder / name, local_files_only=True)

        self.clip_tokenizers = [tokenizer("tokenizer"), tokenizer("tokenizer_2")]
        self.clips = [load(CLIPTextModelWithProjection, "text_encoder"), load(CLIPTextModelWithProjection, "text_encoder_2")]
        self.has_t5 = (folder / "text_encoder_3" / "config.json").is_file()
        self.t5_tokenizer = tokenizer("tokenizer_3") if self.has_t5 else None
        self.t5 = load(T5EncoderModel, "text_encoder_3") if self.has_t5 else None
        self.clip_tokens = self.clip_tokenizers[0].model_max_length  # diffusers pads both CLIPs to this
        self.max_tokens = max_tokens
        self.length = self.clip_tokens + max_tokens  # L of `text`
        self.dim = self.t5.config.d_model if self.has_t5 else _joint_attention_dim(folder)
        self.pooled_dim = sum(clip.config.projection_dim for clip in self.clips)
        self.batch_size, self.device = batch_size, torch.device(device)
        self._cache = {}

    @torch.no_grad()
    def _encode_batch(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        clip_states, pooled = zip(*(self._clip(i, prompts) for i in range(2)))
        clip_states = torch.cat(clip_states, dim=-1)  # (B, 77, D_L + D_G)
        t5_states = self._t5(prompts)  # (B, max_tokens, D)
        clip_states = torch.nn.functional.pad(clip_states, (0, t5_states.shape[-1] - clip_states.shape[-1]))  # (B, 77, D)
        text = torch.cat([clip_states, t5_states], dim=-2)  # (B, L, D)
        return text.float().cpu().numpy(), torch.cat(pooled, dim=-1).float().cpu().numpy()  # (B, L, D), (B, Dp)

    def _clip(self, index: int, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP number `index`: penultimate hidden states (B, 77, D_i) and text_embeds (B, P_i)."""
        ids = self.clip_tokenizers[index](prompts, padding="max_length", max_length=self.clip_tokens,
                                          truncation=True, return_tensors="pt").input_ids
        out = self.clips[index](ids.to(self.device), output_hidden_states=True)  # no attention mask, as diffusers
        return out.hidden_states[-2], out.text_embeds

    def _t5(self, prompts: list[str]) -> torch.Tensor:
        """T5's last hidden states (B, max_tokens, D), or zeros without a T5."""
        if not self.has_t5:
            return torch.zeros(len(prompts), self.max_tokens, self.dim, device=self.device)
        ids = self.t5_tokenizer(prompts, padding="max_length", max_length=self.max_tokens, truncation=True,
                                add_special_tokens=True, return_tensors="pt").input_ids
        return self.t5(ids.to(self.device))[0]  # no attention mask, as diffusers


def _joint_attention_dim(folder: Path) -> int:
    """The transformer's text width: the width of the zeros that stand in for a missing T5."""
    config = folder / "transformer" / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: no text_encoder_3 and no transformer/config.json to size its zeros")
    return int(json.loads(config.read_text())["joint_attention_dim"])
