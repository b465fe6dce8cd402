r"""``ilora``: interpolation-based LoRA (Ren et al. 2024, I-LoRA), as the authors' public code does it.

Two LoRA adapters on one frozen base. The *fast* (working-memory) adapter is trained by
backpropagation on the current rows plus replay rows; the *slow* (long-term) adapter follows it
after every update :math:`t = 1, 2, \dots` (the optimiser steps done so far):

.. math::

    \theta_{slow} \leftarrow \lambda_t\,\theta_{slow} + (1 - \lambda_t)\,\theta_{fast}, \qquad
    \lambda_t = \min\!\Big(1 - \frac{1}{t + 1},\ \lambda\Big)

(the warm-up: while :math:`1 - 1/(t+1) < \lambda` the slow adapter is the running mean of the
fast adapter's iterates). :math:`\lambda` sets the slow adapter's lag: an exponential average
with weight :math:`\lambda` averages iterates :math:`\lambda / (1 - \lambda)` updates old on
average (0.25: a third of an update, nearly a copy; 0.9: 9 updates; 0.99: 99). The loss is

.. math::

    L = (1 - \rho)\,\mathrm{CE}(x_{cur}) + \rho\,\mathrm{CE}(x_{rep})
        + \gamma\, \frac{1}{|H|} \sum_{l, i} \big(h^{fast}_{l,i} - \max(h^{fast}_{l,i}, h^{slow}_{l,i})\big)^2

with :math:`\rho` = ``replay_ratio`` (0.5 gives the authors' mean of the two cross-entropies),
:math:`h_l` the hidden states of every layer (``output_hidden_states``: the embeddings' output
and each decoder layer's, :math:`L + 1` tensors of shape (n, T, d)) on the replay rows, the
maximum element-wise and the slow side without gradient: the fast adapter is pulled up wherever
its activations fall below the slow one's. The replay rows are sampled from a reservoir
(Vitter's algorithm R) of ``buffer_size`` blocks. Probes evaluate the slow adapter, the paper's
inference model, unless ``eval_adapter = "fast"``.

Reference: ``method/ILORA.py`` of github.com/which47/LLMCL (the authors' code): ``ema_alpha =
0.25``, ``reg_weight = 1.0``, a 500-sample reservoir, ``alpha = min(1 - 1/(step + 1),
ema_alpha)`` at every ``on_step_end``, ``(ori_out.loss + plastic_hiddn.loss) / 2 + reg_weight *
l_cons`` with ``l_cons`` the mean squared error of every hidden state against ``torch.where(plastic
> stable, plastic, stable)``. Where this implementation differs, the difference is a setting or
stated here:

- ``consistency_target = "slow-last-layer"``: the MSE to the slow adapter's last hidden states
  instead (this toolkit's earlier variant); ``ema_warmup = false``: :math:`\lambda` from the first
  update.
- The reservoir is fed from the replay corpus (a stand-in for pre-training data; in a task
  sequence, also the finished tasks' blocks); the authors' buffer is fed the training stream
  itself and replays from the second task on.
- The slow adapter starts as a copy of the fast one; the authors add a freshly initialised second
  adapter. Both start with B = 0, so both compute the base model.
- Current and replay rows go through one forward pass (the authors use two; the result is the
  same for a model without batch statistics).
- In a task sequence the warm-up restarts with every task (each task is a new Trainer, as in the
  authors' code).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from ...errors import ConfigError
from ..config import non_negative, option, positive, unit_interval
from . import register_method
from .replay import ReplayBase, ReplayConfig, n_replay

__all__ = ["ILoraMethod", "ILoraConfig", "ReservoirBuffer", "consistency_loss", "ema_update", "ema_lambda"]


class ReservoirBuffer:
    """A uniform sample of ``size`` items from a stream (algorithm R).

    After ``n >= size`` items were added, each of them is in the buffer with probability
    ``size / n``.

    Example
    -------
    >>> buf = ReservoirBuffer(2, seed=0)
    >>> for i in range(10):
    ...     buf.add(i)
    >>> len(buf.items), buf.seen
    (2, 10)
    """

    def __init__(self, size: int, seed: int | list[int] = 0):
        self.size, self.items, self.seen = size, [], 0
        self.rng = np.random.default_rng(seed)

    def add(self, item: Any) -> None:
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = int(self.rng.integers(0, self.seen + 1))  # keep the new item with prob size/(seen+1)
            if j < self.size:
                self.items[j] = item
        self.seen += 1

    def sample(self, k: int) -> list:
        """``k`` distinct buffered items, uniformly."""
        return [self.items[i] for i in self.rng.choice(len(self.items), size=k, replace=False)]

    def state_dict(self) -> dict[str, Any]:
        return {"items": list(self.items), "seen": self.seen, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.items, self.seen = list(state["items"]), int(state["seen"])
        self.rng.bit_generator.state = state["rng"]


def ema_lambda(step: int, lam: float, warmup: bool = True) -> float:
    """The slow adapter's weight after update ``step`` (1 for the first): ``min(1 - 1/(step + 1), lam)``
    with the warm-up, else ``lam``.

    Example
    -------
    >>> [ema_lambda(t, 0.9) for t in (1, 2, 3, 9, 10, 100)]
    [0.5, 0.6666666666666667, 0.75, 0.9, 0.9, 0.9]
    """
    return min(1.0 - 1.0 / (step + 1), lam) if warmup else lam


def ema_update(slow: dict, fast: dict, lam: float) -> None:
    """In place: ``slow <- lam * slow + (1 - lam) * fast`` (lam = 0: a copy; lam = 1: unchanged)."""
    import torch

    with torch.no_grad():
        for name, s in slow.items():
            s.mul_(lam).add_(fast[name].detach(), alpha=1.0 - lam)


def consistency_loss(h_fast: Sequence, h_slow: Sequence, target: str = "max-every-layer"):
    """The consistency term: mean squared difference between the fast adapter's hidden states and
    their target, over every element of every layer given (each (n, T, d)), in float32.

    ``"max-every-layer"``: the target is ``max(h_fast, h_slow)`` element-wise, every layer (the
    authors' code); ``"slow-last-layer"``: the target is ``h_slow`` of the last layer only.
    The slow side carries no gradient.
    """
    import torch

    if target == "slow-last-layer":
        h_fast, h_slow = h_fast[-1:], h_slow[-1:]
    squares = []
    for f, s in zip(h_fast, h_slow, strict=True):
        f, s = f.float(), s.detach().float()
        goal = torch.maximum(f, s) if target == "max-every-layer" else s
        squares.append((f - goal).square().flatten())
    return torch.cat(squares).mean()


def _ema_callback(method: "ILoraMethod"):
    from transformers import TrainerCallback

    class SlowFollowsFast(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # after the optimiser step
            method.update_slow(state.global_step)
            return control

    return SlowFollowsFast()


_TARGETS = Literal["max-every-layer", "slow-last-layer"]


@dataclass
class ILoraConfig(ReplayConfig):
    ema: float = option(0.25, "I-LoRA lambda in slow <- lambda * slow + (1 - lambda) * fast, in [0, 1]; the slow "
                        "adapter lags by about lambda / (1 - lambda) updates (0.25: a third, the authors' code; "
                        "0.9: 9; 0.99: 99)", column="ilora_ema", check=unit_interval)
    ema_warmup: bool = option(True, "use lambda_t = min(1 - 1/(t + 1), lambda) at update t, as the authors' code "
                              "(false: lambda from the first update)", column="ilora_ema_warmup")
    consistency: float = option(1.0, "I-LoRA gamma: weight of the hidden-state consistency MSE, >= 0",
                                column="ilora_consistency", check=non_negative)
    consistency_target: _TARGETS = option(
        "max-every-layer", "'max-every-layer': MSE of every layer's hidden states to the element-wise max of fast and "
        "slow (the authors' code); 'slow-last-layer': MSE to the slow adapter's last hidden states",
        column="ilora_consistency_target")
    buffer_size: int = option(500, "I-LoRA reservoir size in blocks, >= 1", column="ilora_buffer_size",
                              check=positive)
    eval_adapter: Literal["slow", "fast"] = option("slow", "adapter the probes evaluate (slow: the paper's "
                                                   "inference model)", column="ilora_eval_adapter")


@register_method
class ILoraMethod(ReplayBase):
    """I-LoRA: fast and slow LoRA adapters, EMA interpolation, reservoir replay, consistency loss.

    Settings
    --------
    ema : float, default 0.25
        lambda, the slow adapter's weight in its update; the slow adapter lags the fast one by
        about ``lambda / (1 - lambda)`` updates. 0.25 is the authors' public code (a lag of a
        third of an update: the slow adapter is nearly the fast one); a re-implementation uses
        0.999. Which value the paper used is unverified.
    ema_warmup : bool, default true
        ``lambda_t = min(1 - 1/(t + 1), lambda)`` (the authors' code). It binds only for
        ``lambda > 0.5``.
    consistency : float, default 1.0
        gamma, the weight of the consistency term (the authors' code: 1.0).
    consistency_target : "max-every-layer" | "slow-last-layer", default "max-every-layer"
        The authors' target (every layer, element-wise max of fast and slow) or this toolkit's
        earlier one (the slow adapter's last hidden states).
    buffer_size : int, default 500
        Reservoir size in blocks (the authors' code: 500).
    eval_adapter : "slow" | "fast", default "slow"
        Which adapter the probes evaluate.
    replay, replay_ratio, allow_replay_overlap
        As for ``replay``; ``replay_ratio = 0.5`` weighs the two cross-entropies equally, as the
        authors' code does.

    The row's ``ft_train_loss`` is this method's whole training loss (both cross-entropies
    plus the consistency term); ``ft_loss`` is measured on held-out blocks as for every method.
    """

    name = "ilora"
    step_cost = 1.2  # plus a no-grad forward of the slow adapter on the replay rows
    Config = ILoraConfig

    def __init__(self, spec):
        super().__init__(spec)
        self.buffer = ReservoirBuffer(self.config.buffer_size, seed=[spec.train.seed, 2])
        self.model = None
        self.slow: dict = {}

    @classmethod
    def check_run(cls, spec) -> None:
        super().check_run(spec)
        size, n = spec.method.config.buffer_size, n_replay(spec)
        if size < n:
            raise ConfigError(f"method.buffer_size = {size} is smaller than the {n} replay blocks of a batch; "
                              f"use method.buffer_size >= {n}")

    def prepare_data(self, tokenizer, tokenizer_id: str) -> dict[str, str]:
        inputs = super().prepare_data(tokenizer, tokenizer_id)
        for i in self.take(min(self.buffer.size, len(self.pool))):  # the initial fill
            self.buffer.add(int(i))
        return inputs

    def build_model(self, model):
        model = super().build_model(model)
        self.slow = {n: p.detach().clone() for n, p in self._fast().items()}
        return model

    def build_trainer(self, **trainer_kwargs: Any):
        trainer = super().build_trainer(**trainer_kwargs)
        trainer.add_callback(_ema_callback(self))
        return trainer

    def _fast(self) -> dict:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def lora_copies(self) -> list[dict]:
        return [self.slow]

    # ------------------------------------------------------------------ the micro-batch and its loss

    def replay_rows(self):
        """Stream ``n`` new replay blocks into the reservoir, then sample ``n`` from it: (n, T)."""
        import torch

        for i in self.take(self.n_replay):
            self.buffer.add(int(i))
        return self.pool[torch.tensor(self.buffer.sample(self.n_replay))]

    def slow_hidden(self, ids) -> tuple:
        """Every layer's hidden states (L + 1 tensors (n, T, d)) of the slow adapter on ``ids``, no gradient."""
        import torch
        from torch.func import functional_call

        with torch.no_grad():
            out = functional_call(self.model, self.slow, args=(), strict=False,
                                  kwargs={"input_ids": ids, "output_hidden_states": True})
        return out.hidden_states

    def loss(self, model, inputs: dict[str, Any]):
        h_slow = self.slow_hidden(inputs["replay_ids"])  # before the fast forward: no graph yet
        out = self.forward(model, inputs, hidden_states=True)
        m = len(inputs["input_ids"])
        h_fast = [h[m:] for h in out.hidden_states]  # the replay rows
        c = self.config
        return self.mixed_loss(out.logits, inputs) + c.consistency * consistency_loss(h_fast, h_slow,
                                                                                       c.consistency_target)

    def update_slow(self, step: int) -> None:
        """The EMA after update ``step`` (1 for the first)."""
        ema_update(self.slow, self._fast(), ema_lambda(step, self.config.ema, self.config.ema_warmup))

    # ------------------------------------------------------------------ probes and checkpoints

    @contextlib.contextmanager
    def probe_model(self, model) -> Iterator[Any]:
        if self.config.eval_adapter == "fast":
            yield model
            return
        import torch

        fast = self._fast()
        saved = {n: p.detach().clone() for n, p in fast.items()}
        with torch.no_grad():
            for n, p in fast.items():
                p.copy_(self.slow[n])
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in fast.items():
                    p.copy_(saved[n])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "slow": self.slow, "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for n, t in state["slow"].items():
            self.slow[n].copy_(t)
        self.buffer.load_state_dict(state["buffer"])
