r"""``distill``: distillation replay. Replay rows whose targets are the base model's own predictions.

Data-label replay (``replay``) pulls the adapter towards the replay corpus's text; distillation
replay pulls it towards what the base model predicted on that text, which is exactly what the
forgetting loss L_f measures (Kalajdzievski 2024: the target of position t is the base model's
greedy prediction). With :math:`\rho` = ``replay_ratio`` and :math:`f_0` the base model (the same
model with its adapter disabled, PEFT ``disable_adapter()``):

.. math::

    L = (1 - \rho)\,\mathrm{CE}(x_{cur}) + \rho\, D(x_{rep}), \qquad
    D = \mathrm{CE}\big(f_\theta(x_{rep}),\ \arg\max f_0(x_{rep})\big) \quad (\text{``argmax''}), \quad
    D = \mathrm{KL}\big(p_{f_0}(x_{rep}) \,\|\, p_{f_\theta}(x_{rep})\big) \quad (\text{``kl''}),

each averaged over the replay tokens (positions 0..T-2). The base model's predictions are
computed once per micro-batch (no gradient, eval mode) when the replay rows are drawn, so an
update rule that evaluates the loss twice (SAM) reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..config import option
from . import register_method
from .replay import ReplayBase, ReplayConfig, token_ce

__all__ = ["DistillMethod", "DistillConfig", "base_predictions"]


def base_predictions(model, ids, target: str):
    """The base model's targets on ``ids`` (n, T): its greedy next tokens (n, T-1) for
    ``"argmax"``, or its next-token log-probabilities (n, T-1, V) for ``"kl"``.

    ``model`` is the PEFT model: its adapter is disabled for this forward pass.
    """
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter():
            logits = model(input_ids=ids).logits[:, :-1].float()  # (n, T-1, V)
    finally:
        model.train(was_training)
    return logits.argmax(-1) if target == "argmax" else torch.log_softmax(logits, -1)


@dataclass
class DistillConfig(ReplayConfig):
    distill_target: Literal["argmax", "kl"] = option(
        "argmax", "targets of the replay rows: 'argmax' (cross-entropy to the base model's greedy next token, the "
        "target of L_f) or 'kl' (KL from the base model's next-token distribution)", column="distill_target")


@register_method
class DistillMethod(ReplayBase):
    """Distillation replay: replay rows trained towards the base model's predictions.

    Settings
    --------
    distill_target : "argmax" | "kl", default "argmax"
        The replay term: cross-entropy to the base model's greedy next token (the target L_f
        uses), or KL(p_base || p_theta) over the vocabulary.
    replay, replay_ratio, allow_replay_overlap
        As for ``replay``.
    """

    name = "distill"
    Config = DistillConfig
    step_cost = 1.15  # plus a no-grad forward of the base model on the replay rows

    def augment(self, inputs: dict[str, Any]) -> dict[str, Any]:
        inputs = super().augment(inputs)
        return {**inputs, "replay_base": base_predictions(self.model, inputs["replay_ids"],
                                                          self.config.distill_target)}

    def replay_term(self, logits, inputs: dict[str, Any]):
        base = inputs["replay_base"]
        if self.config.distill_target == "argmax":
            return token_ce(logits, base)
        import torch.nn.functional as F

        logp = F.log_softmax(logits.float(), -1)
        return F.kl_div(logp, base, log_target=True, reduction="sum") / base.shape[:-1].numel()
