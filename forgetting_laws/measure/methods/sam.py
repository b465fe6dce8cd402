r"""``sam``: sharpness-aware minimisation over the trainable (LoRA) parameters (Li et al. 2024).

Each update solves :math:`\min_w \max_{\|e\| \le \rho} L(w + e)` to first order:

.. math::

    g = \nabla L(w), \qquad
    e = \rho \, \frac{g}{\|g\|} \quad\text{(SAM)}, \qquad
    e = \rho \, \frac{T_w^2\, g}{\| T_w\, g \|}, \quad T_w = \mathrm{diag}(|w| + \eta)
    \quad\text{(ASAM, ``adaptive = true``; Kwon et al. 2021)},

then the base optimiser steps from :math:`w` with the gradient :math:`\nabla L(w + e)`.
Two forward/backward passes per update. ASAM's :math:`\eta` keeps the ascent from ignoring
parameters at zero: LoRA's B is 0 at initialisation, so with :math:`\eta = 0` the ascent would
never perturb B there.

SAM is an *update rule*: it changes how the step is taken from a loss, not the loss, so it
composes with any objective (``method.name = ["sam", "replay"]``, ``["sam", "distill"]``,
``["sam", "ilora"]``): the objective's micro-batches (replay rows included) are drawn once and
both passes read them. Li et al. 2024 report that SAM complements other anti-forgetting methods.

The scale of rho. SAM's perturbation has norm :math:`\rho` in the space of all LoRA parameters;
ASAM's has norm :math:`\rho` in the rescaled space :math:`T_w^{-1} e`, so there rho is a
*relative* size. On SmolLM2-135M (all-linear LoRA, rsLoRA) the LoRA parameters' norm at
initialisation is about 8.4 sqrt(r) (A's Kaiming init; B = 0), and one AdamW step at lr 1e-3
moves them by about 1e-3 sqrt(P), i.e. 1.1 (r = 1) to 4.4 (r = 16). So the common default
rho = 0.05 perturbs by a few percent of one optimiser step; rho of 0.5-2 (Li et al. report about
2, second-hand) is of the order of a step. A sensible SAM range here is 0.05-2; for ASAM, whose
rho is relative, Kwon et al.'s 0.5 with eta = 0.01.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

from ..config import non_negative, option
from . import register_method
from .lora import LoraMethod

__all__ = ["SamMethod", "SamConfig", "sam_perturbation"]

_EPS = 1e-12  # guards g = 0 (then e = 0 and SAM is the base step)


def sam_perturbation(params: list, grads: list, rho: float, adaptive: bool = False, eta: float = 0.0) -> list:
    """The ascent step ``e`` (one tensor per parameter) for gradients ``grads`` at ``params``.

    SAM: ``e = rho g / ||g||``; ASAM: ``e = rho T^2 g / ||T g||`` with ``T = |w| + eta``
    element-wise. ``e`` depends on ``g`` only through its direction, so clipping ``g``
    beforehand would not change it.
    """
    import torch

    with torch.no_grad():
        scale = [p.abs() + eta for p in params] if adaptive else [torch.ones_like(p) for p in params]
        scaled = [t * g for t, g in zip(scale, grads)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s.float()) for s in scaled]))
        return [rho * t * s / (norm + _EPS) for t, s in zip(scale, scaled)]


@functools.cache
def _sam_trainer(base: type) -> type:
    """``SAM<base>``: the Trainer class ``base`` with every update a SAM update."""

    class SAMTrainer(base):
        """A Trainer whose every update is a SAM update, over any objective's Trainer.

        Exact under gradient accumulation: the micro-batches of one update are kept (as the
        objective augmented them: replay rows are drawn once); after the last one, ``.grad``
        holds the gradient of the whole accumulated batch, the ascent uses it, and the second
        pass re-runs every micro-batch at ``w + e``. The Trainer then clips that second gradient
        and steps the base optimiser, exactly as for plain training. (An optimiser wrapper whose
        ``step(closure)`` re-evaluates would see only the last micro-batch, and per-micro-batch
        ascent would be a different method, m-SAM.) Single-process and DDP-style gradient sync
        are handled; DeepSpeed/FSDP are untested.
        """

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._micro: list[tuple[dict, Any]] = []

        def update_step(self, model, inputs, num_items_in_batch=None):
            loss = super().update_step(model, inputs, num_items_in_batch)
            self._micro.append((inputs, num_items_in_batch))
            if len(self._micro) == self.current_gradient_accumulation_steps:
                batches, self._micro = self._micro, []
                self._second_pass(model, batches)
            return loss  # the loss at w, as plain training reports it

        def _second_pass(self, model, batches: list[tuple[dict, Any]]) -> None:
            import torch

            c = self.method.config
            params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
            saved = [p.detach().clone() for p in params]
            e = sam_perturbation(params, [p.grad for p in params], c.rho, c.adaptive, c.eta)
            with torch.no_grad():
                for p, ei in zip(params, e):
                    p.add_(ei)
                    p.grad.zero_()
            for i, (inputs, n_items) in enumerate(batches):
                last = i == len(batches) - 1
                sync = contextlib.nullcontext() if last else self.accelerator.no_sync(model=model)
                with sync:
                    super().update_step(model, inputs, n_items)
            with torch.no_grad():  # restore w exactly (w + e - e may differ in the last bit)
                for p, w in zip(params, saved):
                    p.copy_(w)

    SAMTrainer.__name__ = SAMTrainer.__qualname__ = f"SAM{base.__name__}"
    return SAMTrainer


@dataclass
class SamConfig:
    rho: float = option(0.05, "SAM ascent radius, >= 0 (0: the base optimiser's step); LoRA on SmolLM2-135M: "
                        "0.05-2 (one AdamW step at lr 1e-3 moves the adapter by about 1-4); ASAM: relative, "
                        "about 0.5", column="sam_rho", check=non_negative)
    adaptive: bool = option(False, "ASAM: scale the ascent element-wise by T = |w| + eta", column="sam_adaptive")
    eta: float = option(0.01, "ASAM's eta in T = |w| + eta, >= 0 (Kwon et al.: 0.01); with eta = 0 the ascent "
                        "ignores parameters at 0, such as LoRA's B at initialisation", column="sam_eta",
                        check=non_negative)


@register_method
class SamMethod(LoraMethod):
    """SAM / ASAM, an update rule: on plain LoRA as ``sam``, on an objective as ``["sam", "<objective>"]``.

    Settings
    --------
    rho : float, default 0.05
        Radius of the ascent step. The common SAM default; on SmolLM2-135M LoRA it is a few
        percent of one AdamW step, and 0.05-2 is the sensible range (Li et al. report about 2,
        second-hand). For ASAM rho is relative to ``|w| + eta``: Kwon et al. use 0.5.
    adaptive : bool, default false
        ASAM: scale the ascent element-wise by ``T = |w| + eta``.
    eta : float, default 0.01
        ASAM's offset (Kwon et al. 2021's public code: 0.01). Ignored by plain SAM.
    """

    name = "sam"
    Config = SamConfig
    role = "update"
    step_cost = 2.0  # two forward/backward passes

    def trainer_class(self) -> type:
        return self.wrap_trainer(super().trainer_class())

    @classmethod
    def wrap_trainer(cls, trainer_class: type) -> type:
        return _sam_trainer(trainer_class)
