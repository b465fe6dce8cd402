r"""``sam``: sharpness-aware minimisation over the trainable (LoRA) parameters (Li et al. 2024).

Each update solves :math:`\min_w \max_{\|e\| \le \rho} L(w + e)` to first order:

.. math::

    g = \nabla L(w), \qquad
    e = \rho \, \frac{g}{\|g\|} \quad\text{(SAM)}, \qquad
    e = \rho \, \frac{|w|^2 \odot g}{\|\, |w| \odot g \,\|} \quad\text{(ASAM, ``adaptive = true``)},

then the base optimiser steps from :math:`w` with the gradient :math:`\nabla L(w + e)`.
Two forward/backward passes per update.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

from ..config import non_negative, option
from . import register_method
from .base import Method
from .lora import lora_model

__all__ = ["SamMethod", "sam_perturbation"]

_EPS = 1e-12  # guards g = 0 (then e = 0 and SAM is the base step)


def sam_perturbation(params: list, grads: list, rho: float, adaptive: bool = False) -> list:
    """The ascent step ``e`` (one tensor per parameter) for gradients ``grads`` at ``params``.

    ``e`` depends on ``g`` only through its direction, so clipping ``g`` beforehand would not
    change it.
    """
    import torch

    with torch.no_grad():
        if adaptive:
            scaled = [p.abs() * g for p, g in zip(params, grads)]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s.float()) for s in scaled]))
            return [rho * p.square() * g / (norm + _EPS) for p, g in zip(params, grads)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        return [rho * g / (norm + _EPS) for g in grads]


@functools.cache
def _sam_trainer_class():
    """``SAMTrainer``, built on first use so that importing this module needs no torch."""
    from transformers import Trainer

    class SAMTrainer(Trainer):
        """A Trainer whose every update is a SAM update.

        Exact under gradient accumulation: the micro-batches of one update are kept; after the
        last one, ``.grad`` holds the gradient of the whole accumulated batch, the ascent uses
        it, and the second pass re-runs every micro-batch at ``w + e``. The Trainer then clips
        that second gradient and steps the base optimiser, exactly as for plain training. (An
        optimiser wrapper whose ``step(closure)`` re-evaluates would see only the last
        micro-batch, and per-micro-batch ascent would be a different method, m-SAM.)
        Single-process and DDP-style gradient sync are handled; DeepSpeed/FSDP are untested.
        """

        def __init__(self, *args: Any, rho: float, adaptive: bool, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.rho, self.adaptive = rho, adaptive
            self._micro: list[tuple[dict, Any]] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            self._micro.append((inputs, num_items_in_batch))
            if len(self._micro) == self.current_gradient_accumulation_steps:
                batches, self._micro = self._micro, []
                self._second_pass(model, batches)
            return loss  # the loss at w, as plain training reports it

        def _second_pass(self, model, batches: list[tuple[dict, Any]]) -> None:
            import torch

            params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
            saved = [p.detach().clone() for p in params]
            e = sam_perturbation(params, [p.grad for p in params], self.rho, self.adaptive)
            with torch.no_grad():
                for p, ei in zip(params, e):
                    p.add_(ei)
                    p.grad.zero_()
            for i, (inputs, n_items) in enumerate(batches):
                last = i == len(batches) - 1
                sync = contextlib.nullcontext() if last else self.accelerator.no_sync(model=model)
                with sync:
                    super().training_step(model, inputs, n_items)
            with torch.no_grad():  # restore w exactly (w + e - e may differ in the last bit)
                for p, w in zip(params, saved):
                    p.copy_(w)

    return SAMTrainer


@dataclass
class SamConfig:
    rho: float = option(0.05, "SAM ascent radius, >= 0 (0: the base optimiser's step)", column="sam_rho",
                        check=non_negative)
    adaptive: bool = option(False, "ASAM: scale the ascent element-wise by |w|", column="sam_adaptive")


@register_method
class SamMethod(Method):
    """SAM / ASAM on top of LoRA.

    Settings
    --------
    rho : float, default 0.05
        Radius of the ascent step (the common SAM default; Li et al. report larger values,
        about 2, second-hand; ASAM usually needs a larger rho than SAM).
    adaptive : bool, default false
        ASAM: scale the ascent element-wise by ``|w|``.
    """

    name = "sam"
    Config = SamConfig
    step_cost = 2.0  # two forward/backward passes

    def build_model(self, model):
        return lora_model(model, self.spec)

    def build_trainer(self, **trainer_kwargs: Any):
        return _sam_trainer_class()(rho=self.config.rho, adaptive=self.config.adaptive, **trainer_kwargs)
