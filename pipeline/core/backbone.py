"""The backbone: diffusers' SD3Transformer2DModel as a velocity model ``v = model(x, t, cond)``.

- Image stream: the noisy image x (B, C, H, W) concatenated on channels with the edit source
  (zeros for T2I) -> (B, 2C, H, W), InstructPix2Pix-style. Pixels (C = 3), or a VAE's latents for a
  pretrained SD3-family model (`pipeline.core.latents`): the backbone only sees C channels.
- Text stream: the frozen encoder's token embeddings (B, L, D); pooled embedding (B, Dp) (Dp = D
  but for SD3's own encoders).
- Timestep: the transformer receives ``t * 1000`` (diffusers' SD3 convention; t=1 is noise).
- Prediction (``model.prediction``): the network's output is the velocity itself (``velocity``, SD3's
  and every pretrained model's) or the clean image x̂₀ (``sample``: "x-prediction, v-loss", Li & He
  2025, arXiv 2511.13720). Either way `Backbone.forward` returns a velocity: for ``sample``,
  ``v = (x_t - x̂₀) / max(t, T_MIN)``, the path's velocity were x̂₀ the data (x_t = (1-t) x₀ + t·noise
  gives noise - x₀ = (x_t - x₀) / t), so fields, the sampler, CFG, routing and every loss stay as they
  are. Images lie on a low-dimensional manifold and noise does not: a narrow transformer with wide
  patch tokens can predict the former, not the latter. The choice is part of the transformer's
  config (``_prediction`` in config.json, a private key diffusers keeps without complaint), read
  back at load, so a checkpoint never depends on today's params.

A checkpoint is a diffusers folder (``save_pretrained``: config.json + safetensors), so it
describes itself and loading never reads today's params.yaml. ``model.pretrained`` names such a
folder (an SD3-family transformer on local disk); a T2I transformer whose input has only C
channels gets its source channels added, zero-initialised, so it starts as the T2I model it was.
A new model's source channels start at zero too: the base never sees a source, so random source
weights would stay random and make an expert fine-tuned from it start by undoing them.

LoRA (``model.lora_rank`` > 0, `add_lora`): peft adapters on the reference's SD3.5 attention
targets (`pipeline.core.lora`) train, and so does the patch embedding, the one layer that reads the
source channels: frozen at their zero start, an edit model could never see its source. Everything
else stays the pretrained weights. `Backbone.save` writes an adapted model merged (`lora.merged_copy`),
so every checkpoint is a plain SD3 transformer: teachers, evaluation and the merge baseline load it
unchanged, and a teacher's adapter is never stacked on a student's.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel
from torch import Tensor, nn

from pipeline.core import lora
from pipeline.core.fields import Cond

# name -> transformer depth and width; the text/pooled dims come from the text encoder.
PRESETS = {
    "tiny": dict(num_layers=1, num_attention_heads=2, attention_head_dim=16),  # tests, ~0.1M
    "S": dict(num_layers=4, num_attention_heads=4, attention_head_dim=32),  # CPU default, ~2.4M
    # S's FLOPs per token (layers x width^2) at other shapes, for the recipe study:
    "S-deep": dict(num_layers=8, num_attention_heads=3, attention_head_dim=32),  # 8 x 96
    "S-wide": dict(num_layers=2, num_attention_heads=6, attention_head_dim=32),  # 2 x 192
    "M": dict(num_layers=6, num_attention_heads=6, attention_head_dim=64),  # ~30M
    "B": dict(num_layers=12, num_attention_heads=12, attention_head_dim=64),  # the ~250M "base", GPU
}


PREDICTIONS = ("velocity", "sample")
# A pretrained model's checkpoints are written in the dtype its own weights come in (SD3.5: bf16,
# half of float32's disk) and its frozen copies (teachers) load in it on a GPU; a model of this
# project's own (the small world) stays float32. The config key carries it to every derived model.
WEIGHTS_DTYPE = "_weights_dtype"
SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
# x-prediction's velocity divides by t: below T_MIN the division is capped (JiT's clip), so the
# v-loss weight (x0 - x̂0)^2 / t^2 stays bounded near the data end.
T_MIN = 0.05


class Backbone(nn.Module):
    """SD3 transformer + the conditioning layout of this project; returns a velocity whatever it predicts."""

    def __init__(self, transformer: SD3Transformer2DModel):
        super().__init__()
        self.transformer = transformer
        self.channels = transformer.config.out_channels
        self.prediction = transformer.config.get("_prediction", "velocity")  # a plain SD3 folder: velocity
        self.weights_dtype = getattr(torch, transformer.config.get(WEIGHTS_DTYPE, "float32"))
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"model config _prediction: {self.prediction!r}; expected one of {PREDICTIONS}")

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        source = torch.zeros_like(x) if cond.source is None else cond.source.to(x)  # (B, C, H, W)
        hidden = torch.cat([x, source], dim=1)  # (B, 2C, H, W)
        out = self.transformer(
            hidden_states=hidden,
            encoder_hidden_states=cond.text.to(x),  # (B, L, D)
            pooled_projections=cond.pooled.to(x),  # (B, D)
            timestep=t.to(x) * 1000,  # (B,)
            return_dict=False,
        )[0]  # (B, C, H, W): v, or x̂₀
        if self.prediction == "velocity":
            return out
        return velocity_from_sample(x, out, t)

    def checkpoint_activations(self) -> Backbone:
        """Gradient checkpointing (`compute.grad_checkpointing`): each transformer block's activations are
        recomputed in backward instead of kept; the same loss and gradients, for memory."""
        self.transformer.enable_gradient_checkpointing()
        return self

    def save(self, folder: str | Path) -> None:
        """Write a self-describing diffusers folder (config.json + weights); a LoRA merged into a copy first."""
        model = lora.merged_copy(self) if lora.lora_layers(self) else self
        if self.weights_dtype != torch.float32:  # written in the pretrained model's dtype; training keeps float32
            model = (copy.deepcopy(model) if model is self else model).to(self.weights_dtype)
        model.transformer.save_pretrained(folder, safe_serialization=True)


def velocity_from_sample(x: Tensor, x0: Tensor, t: Tensor) -> Tensor:
    """The velocity (B, C, H, W) at x_t (B, C, H, W), time t (B,), whose clean end is x̂₀: (x_t - x̂₀) / max(t, T_MIN)."""
    t = t.float().clamp_min(T_MIN).reshape(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1, 1)
    return (x - x0) / t  # in x's precision at least: a bf16 x̂₀ is promoted before the division amplifies its error


def build(preset: str, patch_size: int, image_size: int, text_dim: int, channels: int = 3,
          prediction: str = "velocity") -> Backbone:
    """A freshly initialised backbone from the preset registry, predicting the velocity or the clean image."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"model.prediction: {prediction!r}; expected one of {PREDICTIONS}")
    if preset not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    if image_size % patch_size:
        raise ValueError(f"model.patch_size: {patch_size} does not divide the image size {image_size}")
    spec = PRESETS[preset]
    width = spec["num_attention_heads"] * spec["attention_head_dim"]
    transformer = SD3Transformer2DModel(
        sample_size=image_size, patch_size=patch_size, in_channels=2 * channels, out_channels=channels,
        joint_attention_dim=text_dim, pooled_projection_dim=text_dim, caption_projection_dim=width,
        pos_embed_max_size=image_size // patch_size, **spec,
    )
    transformer.register_to_config(_prediction=prediction)
    with torch.no_grad():  # a T2I model ignores the source, as a pretrained one (which has none) does
        transformer.pos_embed.proj.weight[:, channels:] = 0
    return Backbone(transformer)


def load(folder: str | Path, frozen_on: torch.device | None = None) -> Backbone:
    """Rebuild a backbone from a checkpoint folder (float32 weights, to train); an error naming the
    folder if it is not one. `frozen_on` a GPU: a frozen copy in the checkpoint's own dtype
    (`WEIGHTS_DTYPE`, bf16 for SD3.5), which the GPU's bf16 autocast computes in anyway."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a model checkpoint (no config.json)")
    dtype = None
    if frozen_on is not None and frozen_on.type == "cuda":
        dtype = getattr(torch, json.loads((folder / "config.json").read_text()).get(WEIGHTS_DTYPE, "float32"))
    transformer = SD3Transformer2DModel.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False,
                                                        torch_dtype=dtype)
    return Backbone(transformer.float() if dtype is None else transformer)


def load_pretrained(folder: str | Path, text_dim: int, pooled_dim: int, channels: int) -> Backbone:
    """A local diffusers SD3 transformer (``model.pretrained``), adapted to take a source image.

    `text_dim`, `pooled_dim`: the text encoder's widths; `channels`: the images' (3) or the VAE's latents'.
    """
    folder = Path(folder)
    if (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"  # a whole pipeline folder
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.pretrained: {folder} is not a local diffusers transformer folder")
    transformer = SD3Transformer2DModel.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    config = transformer.config
    for key, dim in (("joint_attention_dim", text_dim), ("pooled_projection_dim", pooled_dim)):
        if config[key] != dim:
            raise ValueError(f"model.pretrained: {folder} has {key}={config[key]}, the text encoder gives {dim}")
    if config.out_channels != channels:
        raise ValueError(f"model.pretrained: {folder} has out_channels={config.out_channels}, its inputs have "
                         f"{channels} channels (3: pixels; a VAE's latent channels: its pipeline folder's vae/)")
    if config.in_channels == config.out_channels:
        _add_source_channels(transformer)
    transformer.register_to_config(**{WEIGHTS_DTYPE: _stored_dtype(folder)})
    return Backbone(transformer.float())


def _stored_dtype(folder: Path) -> str:
    """The dtype of a diffusers folder's safetensors weights (their first tensor's), as a torch name."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return "float32"
    with safe_open(files[0], "pt") as f:
        stored = f.get_slice(next(iter(f.keys()))).get_dtype()
    return SAFETENSORS_DTYPES.get(stored, "float32")


def _add_source_channels(transformer: SD3Transformer2DModel) -> None:
    """Widen the patch embedding from C to 2C input channels; the new ones start at zero."""
    old = transformer.pos_embed.proj  # Conv2d(C, width, patch, patch)
    new = nn.Conv2d(2 * old.in_channels, old.out_channels, old.kernel_size, old.stride, bias=old.bias is not None)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    transformer.pos_embed.proj = new
    transformer.register_to_config(in_channels=2 * old.in_channels)


def add_lora(model: Backbone, rank: int, seed: int) -> Backbone:
    """Make `model` train a fresh LoRA of `rank` (alpha = rank, drawn from `seed`) and its patch embedding only."""
    torch.manual_seed(seed)  # the adapter's initial weights are part of "same seed, same result"
    lora.add_lora(model.transformer, rank)
    model.transformer.pos_embed.proj.requires_grad_(True)  # the source channels' only way in
    return model


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def average(folders: list[str | Path]) -> Backbone:
    """The weight-merge baseline: the parameter-wise mean of checkpoints of one architecture."""
    models = [load(f) for f in folders]
    configs = {json_config(m) for m in models}
    if len(configs) != 1:
        raise ValueError(f"merge: {[str(f) for f in folders]} do not share one architecture")
    merged = models[0]
    states = [m.state_dict() for m in models]
    merged.load_state_dict({k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[0]})
    return merged


def json_config(model: Backbone) -> str:
    """The architecture config and prediction as a canonical string (without diffusers' bookkeeping keys)."""
    config = {k: v for k, v in model.transformer.config.items() if not k.startswith("_")}
    return json.dumps(config | {"prediction": model.prediction}, sort_keys=True, default=str)
