"""Probes of how the prompt reaches the image, for the teachers' study: `teacher_study.py` with the
backbone's conditioning changed in ways that are not params (each a question, not a recipe).

    PROBE=tokens_only python benchmarks/conditioning_probes.py --seconds 480 --variant no-pooled \\
        model.prediction=sample model.patch_size=8 --out benchmarks/results/cpu/study/no-pooled.json

PROBE is one of:
- ``tokens_only``: the pooled embedding zeroed (the prompt only through the joint attention's tokens);
- ``pooled_only``: the token embeddings zeroed (the prompt only through the pooled AdaLN path);
- ``pooled_scaled``: the pooled embedding times sqrt(D) (MiniLM's is unit-norm, ~0.05 a dimension,
  where SD3's pooled CLIP embeddings are ~1);
- ``qk_norm``: RMSNorm on queries and keys (SD3.5's ``qk_norm``);
- ``adapter``: one trainable pre-norm transformer layer (384 wide, 6 heads, learned positions) over the
  frozen MiniLM token states, residual. Its weights are not part of the saved folder, so this probe
  scores the model it trained in memory (no --rescore).
The first three apply at training and at scoring alike (so --rescore works for them).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import teacher_study  # noqa: E402
from pipeline.core import backbone  # noqa: E402
from pipeline.train import sft  # noqa: E402

PROBES = ("tokens_only", "pooled_only", "pooled_scaled", "qk_norm", "adapter")


def _conditioned(probe: str):
    forward = backbone.Backbone.forward

    def probed(self, x, t, cond):
        if probe == "tokens_only":
            cond = dataclasses.replace(cond, pooled=torch.zeros_like(cond.pooled))
        elif probe == "pooled_only":
            cond = dataclasses.replace(cond, text=torch.zeros_like(cond.text))
        elif probe == "pooled_scaled":
            cond = dataclasses.replace(cond, pooled=cond.pooled * cond.pooled.shape[-1] ** 0.5)
        elif probe == "adapter":
            pad = ~cond.text.any(-1)  # (B, L) padding positions (zeroed by the encoder)
            text = cond.text + self.adapter(cond.text + self.positions[:, : cond.text.shape[1]],
                                            src_key_padding_mask=pad)
            cond = dataclasses.replace(cond, text=text.masked_fill(pad[..., None], 0.0))
        return forward(self, x, t, cond)

    return probed


def _with_adapter():
    init = backbone.Backbone.__init__

    def adapted(self, transformer):
        init(self, transformer)
        width = transformer.config.joint_attention_dim
        self.positions = nn.Parameter(torch.zeros(1, 64, width))
        layer = nn.TransformerEncoderLayer(width, 6, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.adapter = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    backbone.Backbone.__init__ = adapted
    trained = {}
    train_model = sft.train_model

    def keep(*args, **kwargs):
        result = trained["model"] = train_model(*args, **kwargs)
        return result

    sft.train_model = keep
    teacher_study.backbone.load = lambda folder: trained["model"].model


def main() -> None:
    probe = os.environ.get("PROBE", "")
    if probe not in PROBES:
        raise SystemExit(f"PROBE={probe!r}: expected one of {PROBES}")
    if probe == "qk_norm":
        for name, spec in backbone.PRESETS.items():
            backbone.PRESETS[name] = dict(spec, qk_norm="rms_norm")
    else:
        backbone.Backbone.forward = _conditioned(probe)
    if probe == "adapter":
        _with_adapter()
    teacher_study.main()


if __name__ == "__main__":
    main()
