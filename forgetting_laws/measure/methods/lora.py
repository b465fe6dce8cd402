"""``lora``: plain LoRA on the ``transformers.Trainer`` (the baseline; the default method)."""

from __future__ import annotations

from . import register_method
from .base import Method

__all__ = ["LoraMethod", "lora_model"]


def lora_model(model, spec):
    """Wrap ``model`` with a LoRA adapter as ``spec.lora`` says (B = 0: the adapter starts inert)."""
    import torch
    from peft import LoraConfig, get_peft_model

    lora = spec.lora
    cfg = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, use_rslora=lora.rslora,
                     target_modules=lora.target_modules, lora_dropout=lora.dropout,
                     task_type="CAUSAL_LM")
    torch.manual_seed(spec.train.seed)  # the A-matrix initialisation
    return get_peft_model(model, cfg)


@register_method
class LoraMethod(Method):
    """Plain LoRA: one adapter, the model's own cross-entropy, the stock training step. No settings."""

    name = "lora"

    def build_model(self, model):
        return lora_model(model, self.spec)
