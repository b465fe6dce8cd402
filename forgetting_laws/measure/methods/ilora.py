r"""``ilora``: interpolation-based LoRA (Ren et al. 2024, I-LoRA).

Two LoRA adapters on one frozen base. The *fast* adapter is trained on the current batch plus
a replay batch; the *slow* adapter follows it after every update,

.. math:: \theta_{slow} \leftarrow \lambda\,\theta_{slow} + (1 - \lambda)\,\theta_{fast},

and the loss is

.. math:: L = \mathrm{CE}(x_{cur}) + \mathrm{CE}(x_{rep}) + \gamma\,\mathrm{MSE}(h_{fast}(x_{rep}), h_{slow}(x_{rep})),

with :math:`h` the last hidden states (B, T, d) and the slow side held fixed (no gradient).
The replay batch is sampled from a reservoir buffer (Vitter's algorithm R) fed by a stream of
blocks of the replay corpus: filled to ``buffer_size`` at the start, then ``n`` new blocks
per micro-batch. Probes evaluate the slow adapter unless ``eval_adapter = "fast"``.

The slow adapter is kept as plain tensors beside the model (same names as the fast LoRA
parameters), so the trainable parameter count P is the fast adapter's, and it is swapped in
for the probes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from dataclasses import dataclass
from typing import Literal

from ..config import non_negative, option, positive, unit_interval
from . import register_method
from .replay import ReplayBase, ReplayConfig

__all__ = ["ILoraMethod", "ReservoirBuffer", "consistency_loss", "ema_update"]


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


def ema_update(slow: dict, fast: dict, lam: float) -> None:
    """In place: ``slow <- lam * slow + (1 - lam) * fast`` (lam = 0: a copy; lam = 1: unchanged)."""
    import torch

    with torch.no_grad():
        for name, s in slow.items():
            s.mul_(lam).add_(fast[name].detach(), alpha=1.0 - lam)


def consistency_loss(h_fast, h_slow):
    """Mean squared difference of hidden states (B, T, d), in float32."""
    import torch.nn.functional as F

    return F.mse_loss(h_fast.float(), h_slow.detach().float())


def _ilora_trainer(**trainer_kwargs: Any):
    from transformers import Trainer, TrainerCallback

    class _Ema(TrainerCallback):
        def __init__(self, method: "ILoraMethod"):
            self.method = method

        def on_step_end(self, args, state, control, **kw):  # after the optimiser step
            self.method.update_slow()
            return control

    class ILoraTrainer(Trainer):
        """Loss = CE(current) + CE(replay) + gamma * consistency; the slow adapter follows by EMA."""

        def __init__(self, *args: Any, method: "ILoraMethod", **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.method = method
            self.loss_is_scaled_for_ga = False  # a per-micro-batch mean: the Trainer divides by GA
            self.add_callback(_Ema(method))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids = inputs["input_ids"]
            replay = self.method.replay_batch().to(ids.device)  # (n, T)
            h_slow = self.method.slow_hidden(replay)  # before any fast forward: no graph yet
            cur = model(input_ids=ids, labels=inputs["labels"])
            rep = model(input_ids=replay, labels=replay, output_hidden_states=True)
            gamma = self.method.config.consistency
            loss = cur.loss + rep.loss + gamma * consistency_loss(rep.hidden_states[-1], h_slow)
            return (loss, cur) if return_outputs else loss

    return ILoraTrainer(method=trainer_kwargs.pop("method"), **trainer_kwargs)


@dataclass
class ILoraConfig(ReplayConfig):
    ema: float = option(0.25, "I-LoRA lambda: slow <- lambda * slow + (1 - lambda) * fast, in [0, 1]",
                        column="ilora_ema", check=unit_interval)
    consistency: float = option(1.0, "I-LoRA gamma: weight of the hidden-state consistency MSE, >= 0",
                                column="ilora_consistency", check=non_negative)
    buffer_size: int = option(500, "I-LoRA reservoir size in blocks, >= 1", column="ilora_buffer_size",
                              check=positive)
    eval_adapter: Literal["slow", "fast"] = option("slow", "adapter the probes evaluate",
                                                   column="ilora_eval_adapter")


@register_method
class ILoraMethod(ReplayBase):
    """I-LoRA: fast and slow LoRA adapters, EMA interpolation, reservoir replay, consistency loss.

    Settings
    --------
    ema : float, default 0.25
        lambda, the slow adapter's weight in its update. 0.25 is the authors' public code;
        a re-implementation uses 0.999 (which makes the slow adapter move about 1000x slower:
        over a short run it stays near the base model). Which one the paper uses is unverified.
    consistency : float, default 1.0
        gamma, the weight of the hidden-state MSE on replay samples (public code: 1.0).
    buffer_size : int, default 500
        Reservoir size in blocks (public code: 500).
    eval_adapter : "slow" | "fast", default "slow"
        Which adapter the probes evaluate.
    replay, replay_ratio
        As for ``replay``: the replay corpus and the fraction of each micro-batch it fills.

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
        from ...errors import ConfigError
        from .replay import n_replay

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
        self.model = model
        self.slow = {n: p.detach().clone() for n, p in self._fast().items()}
        return model

    def _fast(self) -> dict:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def replay_batch(self):
        """Stream ``n`` new replay blocks into the buffer, then sample ``n`` from it: (n, T)."""
        import torch

        for i in self.take(self.n_replay):
            self.buffer.add(int(i))
        return self.pool[torch.tensor(self.buffer.sample(self.n_replay))]

    def slow_hidden(self, ids):
        """Last hidden states (n, T, d) of the slow adapter on ``ids``, without gradient."""
        import torch
        from torch.func import functional_call

        with torch.no_grad():
            out = functional_call(self.model, self.slow, args=(), kwargs={"input_ids": ids, "output_hidden_states": True},
                                  strict=False)
        return out.hidden_states[-1]

    def update_slow(self) -> None:
        ema_update(self.slow, self._fast(), self.config.ema)

    def build_trainer(self, **trainer_kwargs: Any):
        return _ilora_trainer(method=self, **trainer_kwargs)

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
