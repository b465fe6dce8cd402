"""``replay``: experience replay. A fraction ``replay_ratio`` of every micro-batch is drawn from
a replay corpus standing in for pre-training data; the rest is fine-tuning data.

The replay blocks never overlap the blocks the probes read: when the replay corpus is the
reference corpus, the replay pool is the reference corpus minus its probe blocks (the same
seeded split :func:`forgetting_laws.measure.train.prepare_data` uses); when it is the fine-tuning
corpus, the pool is its training part (the held-out blocks are left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ConfigError
from ..config import option
from . import register_method
from .base import Method
from .lora import lora_model

__all__ = ["ReplayMethod", "ReplayConfig", "replay_pool", "n_replay"]


def _corpus_name(v: str) -> str | None:
    return None if v.strip() else "must name a corpus (e.g. 'python-docs', 'hf:...', a local file)"


def _open_unit(v: float) -> str | None:
    return None if 0 < v < 1 else "must be in (0, 1)"


@dataclass
class ReplayConfig:
    """Settings shared by the methods that replay (``replay``, ``ilora``)."""

    replay: str = option("python-docs", "replay corpus (any corpus name); blocks disjoint from the probe blocks",
                         column="replay_corpus", check=_corpus_name)
    replay_ratio: float = option(0.5, "fraction of each micro-batch drawn from the replay corpus, in (0, 1)",
                                 column="replay_ratio", check=_open_unit)


def n_replay(spec) -> int:
    """Replay blocks per micro-batch: ``round(replay_ratio * train.batch_size)``."""
    return int(round(spec.method.config.replay_ratio * spec.train.batch_size))


def replay_pool(spec, tokenizer, tokenizer_id: str) -> tuple[np.ndarray, str]:
    """Blocks (M, T) of the replay corpus that no probe reads (see the module docstring), and the
    corpus's content fingerprint."""
    from ..corpora import split_blocks, token_blocks

    d, name = spec.data, spec.method.config.replay
    blocks, fingerprint = token_blocks(name, tokenizer, d.seq_len, tokenizer_id, field="method.replay")
    if name == d.reference:
        _, blocks = split_blocks(blocks, d.reference_blocks, d.split_seed, "data.reference_blocks", name)
    elif name == d.dataset:
        _, blocks = split_blocks(blocks, d.heldout_blocks, d.split_seed, "data.heldout_blocks", name)
    need = n_replay(spec)
    if len(blocks) < need:
        raise ConfigError(f"method.replay = {name!r}: only {len(blocks)} blocks of {d.seq_len} tokens are "
                          f"left outside the probe blocks, {need} are needed per batch; use a larger corpus "
                          "or lower method.replay_ratio")
    return blocks, fingerprint


class ReplayBase(Method):
    """What replaying methods share: the replay pool, its seeded stream and the batch split."""

    def __init__(self, spec):
        super().__init__(spec)
        self.n_replay = n_replay(spec)
        self.pool = None  # torch (M, T) once prepare_data ran
        self.cursor = 0  # replay blocks drawn so far: the stream position
        self._order: np.ndarray | None = None
        self._tasks_done = 0  # tasks of a continual sequence already added to the pool

    @classmethod
    def check_run(cls, spec) -> None:
        b, n = spec.train.batch_size, n_replay(spec)
        if not 1 <= n <= b - 1:
            ratio = spec.method.config.replay_ratio
            raise ConfigError(f"method.replay_ratio = {ratio!r} gives {n} replay blocks in a batch of "
                              f"train.batch_size = {b}; each batch needs 1 to {b - 1} replay blocks: "
                              "change method.replay_ratio or train.batch_size")

    def prepare_data(self, tokenizer, tokenizer_id: str) -> dict[str, str]:
        import torch

        blocks, fingerprint = replay_pool(self.spec, tokenizer, tokenizer_id)
        self.pool = torch.from_numpy(blocks)
        self._order = np.random.default_rng([self.spec.train.seed, 1]).permutation(len(blocks))
        return {"method.replay": fingerprint}

    def end_task(self, train_blocks: np.ndarray) -> None:
        """In a task sequence, a finished task's training blocks join the replay pool, so later
        tasks replay it (experience replay over tasks); the stream restarts on a new seeded order.
        Pool indices held elsewhere (I-LoRA's reservoir) stay valid: blocks are only appended."""
        import torch

        self.pool = torch.cat([self.pool, torch.from_numpy(train_blocks)])
        self._tasks_done += 1
        self._order = np.random.default_rng([self.spec.train.seed, 1, self._tasks_done]).permutation(len(self.pool))
        self.cursor = 0

    def take(self, k: int) -> np.ndarray:
        """The next ``k`` pool indices of the seeded stream (it cycles through the pool)."""
        idx = self._order[(self.cursor + np.arange(k)) % len(self._order)]
        self.cursor += k
        return idx

    def build_model(self, model):
        return lora_model(model, self.spec)

    def train_batch_size(self) -> int:
        return self.spec.train.batch_size - self.n_replay

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = int(state["cursor"])


def _replay_trainer(**trainer_kwargs: Any):
    from transformers import Trainer

    class ReplayTrainer(Trainer):
        """Appends the method's replay blocks to every micro-batch before the usual step."""

        def __init__(self, *args: Any, method: "ReplayMethod", **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.method = method

        def training_step(self, model, inputs, num_items_in_batch=None):
            # The token count the Trainer computed covers only the fine-tuning rows: drop it,
            # so the loss is the mean over the mixed batch and is divided by the accumulation steps.
            return super().training_step(model, self.method.mix(inputs), None)

    return ReplayTrainer(**trainer_kwargs)


@register_method
class ReplayMethod(ReplayBase):
    """Experience replay alone.

    Settings
    --------
    replay : str, default "python-docs"
        The replay corpus (any corpus name).
    replay_ratio : float, default 0.5
        Fraction of every micro-batch taken from the replay corpus; ``round(ratio * batch_size)``
        blocks replace fine-tuning blocks, so a batch keeps ``train.batch_size`` blocks.
    """

    name = "replay"
    Config = ReplayConfig

    def mix(self, inputs: dict) -> dict:
        """``inputs`` (B - n rows) with ``n`` replay rows appended: (B, T)."""
        import torch

        ids = inputs["input_ids"]
        replay = self.pool[torch.from_numpy(self.take(self.n_replay))].to(ids.device)  # (n, T)
        return {**inputs, "input_ids": torch.cat([ids, replay]), "labels": torch.cat([inputs["labels"], replay])}

    def build_trainer(self, **trainer_kwargs: Any):
        return _replay_trainer(method=self, **trainer_kwargs)
