"""LoRA adapters (through peft) on SD3 transformers: trainable students, and teachers merged from them.

- `add_lora` injects one adapter named "default" into the reference's SD3.5 targets (the joint
  attention's image and text projections); gaussian init (A ~ N(0, 1/r), B = 0), so the adapted
  model starts as its base; alpha = rank unless given. Afterwards only the adapter is trainable.
- A teacher is a `merged_copy`: a frozen deep copy with the adapter folded into the weights and peft's
  wrappers gone. Teacher LoRAs are never stacked on the student's trainable adapter.
- Add it to the SD3Transformer2DModel (not a wrapper around it): the adapter's module paths are then
  those of any SD3 transformer of that architecture.
"""
from __future__ import annotations

import copy

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
ADAPTER = "default"


def add_lora(model: nn.Module, rank: int, alpha: float | None = None) -> nn.Module:
    """Inject a fresh gaussian-init LoRA into `model` in place; freeze everything else. Returns `model`."""
    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=TARGETS,
                        init_lora_weights="gaussian")
    if lora_layers(model):
        raise ValueError("lora: the model already has an adapter; merge it into a copy instead of stacking")
    model.requires_grad_(False)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)  # marks only the adapter trainable
    if not lora_layers(model):
        raise ValueError(f"lora: none of the target modules {config.target_modules} is in the model")
    return model


def lora_layers(model: nn.Module) -> list[str]:
    """The names of peft's adapter-wrapped layers in `model` (empty for a plain model)."""
    return [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


def merged_copy(model: nn.Module) -> nn.Module:
    """A frozen (eval, no grad) deep copy with the adapter merged into the weights and peft's wrappers removed."""
    merged = copy.deepcopy(model)
    for name in lora_layers(merged):
        parent, _, child = name.rpartition(".")
        layer = merged.get_submodule(name)
        layer.merge()  # W <- W + (alpha / r) B A
        setattr(merged.get_submodule(parent), child, layer.get_base_layer())
    for module in merged.modules():  # peft (and diffusers' PeftAdapterMixin) bookkeeping of the adapters
        if hasattr(module, "peft_config"):
            del module.peft_config
        if getattr(module, "_hf_peft_config_loaded", False):
            module._hf_peft_config_loaded = False
    return merged.eval().requires_grad_(False)
