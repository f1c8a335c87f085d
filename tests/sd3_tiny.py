"""A tiny random SD3.5-style diffusers pipeline folder, built offline in about a second (for tests).

`make_tiny_sd3(folder)` writes what ``StableDiffusion3Pipeline.save_pretrained`` writes
(model_index.json + one sub-folder per component), so the code under test loads it exactly as it
would load a real SD3.5 folder:

- transformer: SD3Transformer2DModel, 2 layers (the first with SD3.5's dual attention, the last
  context-pre-only), RMS qk-norm, latent sample size 16 (32x32 pixels / the VAE's 2x downsample).
- vae: AutoencoderKL with block_out_channels (8, 16) (downsample 2), no quant convs, SD3's
  scaling_factor 1.5305 and shift_factor 0.0609.
- text_encoder / text_encoder_2: CLIPTextModelWithProjection, hidden 16 and 32 (CLIP-L / CLIP-G
  stand-ins), projection dims 16 and 32 -> pooled width 48; 77 CLIP tokens, as SD3's tokenizers.
- text_encoder_3: T5EncoderModel, d_model 64 (wider than CLIP-L+G = 48, as 4096 > 2048 in SD3), or
  none at all with ``with_t5=False`` (diffusers then feeds zeros of width joint_attention_dim; its
  ``from_pretrained`` of such a folder needs ``text_encoder_3=None, tokenizer_3=None`` passed).
- tokenizers: transformers 5's tokenizers-backed ``CLIPTokenizer`` (byte-level BPE built from an
  in-memory vocab of letters and a few merges) and ``T5Tokenizer`` (a Unigram model built from an
  in-memory list of (piece, score)); neither needs a download, sentencepiece or a vocab file.
  Unknown characters map to the unk token.
- scheduler: FlowMatchEulerDiscreteScheduler(shift=3.0), as SD3.5-M's.
"""
from __future__ import annotations

import string
from pathlib import Path

import torch

CLIP_TOKENS = 77
LETTERS = string.ascii_lowercase


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    pieces = ["<|startoftext|>", "<|endoftext|>", "!"] + list(LETTERS) + [c + "</w>" for c in LETTERS]
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("r", "e"), ("re", "d</w>")]  # cat dog red
    pieces += ["ca", "cat</w>", "do", "dog</w>", "re", "red</w>"]
    return CLIPTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=merges, model_max_length=CLIP_TOKENS)


def _t5_tokenizer():
    from transformers import T5Tokenizer

    # T5's order: pad 0, eos 1, unk 2 (T5Tokenizer hard-codes unk_id=2).
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in LETTERS] + [("▁" + c, -2.5) for c in LETTERS]
    vocab += [("▁cat", -1.0), ("▁dog", -1.0), ("▁red", -1.0)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _clip(hidden: int, vocab_size: int, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, projection_dim=hidden,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=CLIP_TOKENS, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config).eval()


def _t5(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def make_tiny_sd3(folder: str | Path, *, latent_channels: int = 4, with_t5: bool = True) -> Path:
    """Write a tiny random SD3 pipeline to `folder` (32x32 RGB images) and return its path."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    folder = Path(folder)
    clip_l_tok, clip_g_tok, t5_tok = _clip_tokenizer(), _clip_tokenizer(), _t5_tokenizer()
    clip_g_tok.pad_token = "!"  # SD3's CLIP-G tokenizer pads with "!", CLIP-L's with <|endoftext|>
    clip_l, clip_g = _clip(16, len(clip_l_tok), clip_l_tok), _clip(32, len(clip_g_tok), clip_g_tok)
    t5_width = 64
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=32, scaling_factor=1.5305,
        shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
    )
    latent_size = 32 // 2 ** (len(vae.config.block_out_channels) - 1)  # 16
    transformer = SD3Transformer2DModel(
        sample_size=latent_size, patch_size=2, in_channels=latent_channels, out_channels=latent_channels,
        num_layers=2, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=t5_width,
        caption_projection_dim=16, pooled_projection_dim=16 + 32, pos_embed_max_size=latent_size // 2,
        dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip_l, tokenizer=clip_l_tok, text_encoder_2=clip_g, tokenizer_2=clip_g_tok,
        text_encoder_3=_t5(len(t5_tok), t5_width) if with_t5 else None, tokenizer_3=t5_tok if with_t5 else None,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
