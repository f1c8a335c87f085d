"""Memory and disk a model needs at SD3.5-Medium size, computed from the architectures (no weights).

Each network is built from its published config on torch's meta device (no memory, no download)
and its parameters counted; bytes follow from the dtypes the pipeline uses (README "Scale"):

- a checkpoint on disk: the pretrained model's dtype, bf16 (2 bytes a parameter);
- a model in training, full fine-tuning: float32 weights + float32 gradients + AdamW's two float32
  moments (16 bytes a parameter); with LoRA the base weights (float32, 4 bytes) and the adapter's 16;
- a frozen teacher on the GPU: bf16 (2 bytes); the text encoders on the GPU: bf16, only in `embed`.

Activations are not counted (they scale with batch and resolution; `compute.grad_checkpointing`
keeps one block's). `python benchmarks/sd35_budget.py` prints the table the README shows.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core import backbone, lora  # noqa: E402

GIB = 2 ** 30
# stabilityai/stable-diffusion-3.5-medium: transformer/config.json, text_encoder*/config.json, vae/config.json
TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, vocab_size=49408)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, vocab_size=49408, hidden_act="gelu")
T5_XXL = dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=32128,
              feed_forward_proj="gated-gelu")
VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           layers_per_block=2, use_quant_conv=False, use_post_quant_conv=False)


def count(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def main() -> None:
    sizes = {
        "transformer (with the source channels)": count(lambda: SD3Transformer2DModel(**(TRANSFORMER | {"in_channels": 32}))),
        "CLIP-L text": count(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L))),
        "CLIP-G text": count(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G))),
        "T5-XXL encoder": count(lambda: T5EncoderModel(T5Config(**T5_XXL))),
        "VAE": count(lambda: AutoencoderKL(**VAE)),
    }
    print("| network | parameters | bf16 on disk / on the GPU |")
    print("| --- | --- | --- |")
    for name, n in sizes.items():
        print(f"| {name} | {n / 1e9:.3f}B | {2 * n / GIB:.1f} GiB |")
    n = sizes["transformer (with the source channels)"]
    with torch.device("meta"):  # LoRA of rank 16 on the reference's targets (the joint attention's projections)
        model = backbone.Backbone(SD3Transformer2DModel(**(TRANSFORMER | {"in_channels": 32})))
        lora.add_lora(model.transformer, 16)
        rank16 = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    print()
    print("| what | GiB |")
    print("| --- | --- |")
    print(f"| one checkpoint (bf16) | {2 * n / GIB:.1f} |")
    print(f"| full fine-tuning: weights, gradients, AdamW (float32) | {16 * n / GIB:.1f} |")
    print(f"| LoRA rank 16 ({rank16 / 1e6:.1f}M adapter parameters): float32 base + adapter state | "
          f"{(4 * n + 16 * rank16) / GIB:.1f} |")
    print(f"| a distillation step's frozen teachers, two routes (bf16) | {2 * 2 * n / GIB:.1f} |")
    print(f"| the text encoders in `embed` (bf16) | "
          f"{2 * (sizes['CLIP-L text'] + sizes['CLIP-G text'] + sizes['T5-XXL encoder']) / GIB:.1f} |")
    models = 1 + 2 + 1 + 1 + 15  # base, 2 experts, joint, merge, 3 x 3 + 2 x 3 students
    print(f"| the default rows' {models} checkpoints (bf16), once in the DVC cache | {models * 2 * n / GIB:.0f} |")


if __name__ == "__main__":
    main()
