r"""``replay``: experience replay, and what every replaying method shares (``distill``, ``ilora``).

A fraction ``replay_ratio`` of every micro-batch is drawn from a replay corpus standing in for
pre-training data (default ``wiki-sample``, general English prose); the rest is fine-tuning data.
With :math:`\rho` = ``replay_ratio``, every replaying method's loss is

.. math:: L = (1 - \rho)\,\mathrm{CE}(x_{cur}) + \rho\, D(x_{rep}) \;[+ \text{the method's own terms}],

the mean of the two parts weighted by their share of the micro-batch's rows (:math:`\rho B` of
the :math:`B` rows replay, so :math:`\rho B` must be a whole number): replay's weight in the loss
is :math:`\rho` in every method. :math:`D` is the cross-entropy against the data (``replay``,
``ilora``) or against the base model's own predictions (``distill``). Each part is the mean over
its tokens, so with the data's labels :math:`L` is exactly the cross-entropy of the mixed batch.

The replay blocks never overlap the blocks the probes read. A replay corpus that is the probe
(reference) corpus or the fine-tuning corpus (in a task sequence: any task) is refused unless
``allow_replay_overlap = true``: replaying the reference corpus teaches the model the very
distribution L_f is measured on, so lower L_f would not mean remembering. When it is allowed,
the replay pool is the reference corpus minus its probe blocks (the seeded split of
:func:`forgetting_laws.measure.setup.load_data`), or the fine-tuning corpus's training part.
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

__all__ = ["ReplayMethod", "ReplayBase", "ReplayConfig", "replay_pool", "n_replay", "check_replay_corpus",
           "token_ce"]


def _corpus_name(v: str) -> str | None:
    return None if v.strip() else "must name a corpus (e.g. 'wiki-sample', 'hf:...', a local file)"


def _open_unit(v: float) -> str | None:
    return None if 0 < v < 1 else "must be in (0, 1)"


@dataclass
class ReplayConfig:
    """Settings shared by the methods that replay (``replay``, ``distill``, ``ilora``)."""

    replay: str = option("wiki-sample", "replay corpus standing in for pre-training data (any corpus name); not "
                         "the probe or fine-tuning corpus unless allow_replay_overlap", column="replay_corpus",
                         check=_corpus_name)
    replay_ratio: float = option(0.5, "fraction of each micro-batch's blocks drawn from the replay corpus, and "
                                 "the replay term's weight in the loss, in (0, 1); times train.batch_size a whole "
                                 "number", column="replay_ratio", check=_open_unit)
    allow_replay_overlap: bool = option(False, "let the replay corpus be the probe (reference) corpus or a "
                                        "fine-tuning corpus (a task of a sequence); their probe and held-out blocks "
                                        "are still left out", column="replay_overlap_allowed", run_id=False)


def n_replay(spec) -> int:
    """Replay blocks per micro-batch: ``replay_ratio * train.batch_size`` (a whole number)."""
    return int(round(spec.method.config.replay_ratio * spec.train.batch_size))


def check_replay_corpus(spec, corpora: dict[str, str]) -> None:
    """Refuse a replay corpus that is one of ``corpora`` (corpus -> what it is in the run) unless
    ``method.allow_replay_overlap``."""
    c = spec.method.config
    if c.replay in corpora and not c.allow_replay_overlap:
        raise ConfigError(
            f"method.replay = {c.replay!r} is also {corpora[c.replay]}: replaying it trains on that distribution "
            "(its probe and held-out blocks are left out, but not the rest), so forgetting would be measured "
            "against data the model is trained on; use a general-domain corpus such as 'wiki-sample', or set "
            "method.allow_replay_overlap = true to do this on purpose")


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


def token_ce(logits, targets):
    """Mean cross-entropy over tokens: logits (N, T', V), targets (N, T'), in float32."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


class ReplayBase(Method):
    """What replaying methods share: the replay pool, its seeded stream, the batch split and the
    mixed loss. A subclass chooses the replay rows (:meth:`replay_rows`), their targets
    (:meth:`augment`, :meth:`replay_term`) and adds terms of its own (:meth:`loss`)."""

    def __init__(self, spec):
        super().__init__(spec)
        self.n_replay = n_replay(spec)
        self.pool = None  # torch (M, T) once prepare_data ran
        self.cursor = 0  # replay blocks drawn so far: the stream position
        self._order: np.ndarray | None = None
        self._tasks_done = 0  # tasks of a continual sequence already added to the pool

    @classmethod
    def check_run(cls, spec) -> None:
        b, ratio = spec.train.batch_size, spec.method.config.replay_ratio
        rows = ratio * b
        if abs(rows - round(rows)) > 1e-9 or not 1 <= round(rows) <= b - 1:
            fits = ", ".join(f"{k / b:g}" for k in range(1, b)) or "none: raise train.batch_size to 2 or more"
            raise ConfigError(f"method.replay_ratio = {ratio!r} gives {rows:g} replay blocks in a micro-batch of "
                              f"train.batch_size = {b}; replay_ratio is both the fraction of each micro-batch's "
                              f"blocks and replay's weight in the loss, so it must be k / {b} with 1 <= k < {b} "
                              f"({fits}): change method.replay_ratio or train.batch_size")
        check_replay_corpus(spec, {spec.data.reference: "data.reference, the corpus the forgetting probes read",
                                   spec.data.dataset: "data.dataset, the fine-tuning corpus"})

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
        self.model = lora_model(model, self.spec)
        return self.model

    def train_batch_size(self) -> int:
        return self.spec.train.batch_size - self.n_replay

    # ------------------------------------------------------------------ the micro-batch and its loss

    def replay_rows(self):
        """The next ``n`` replay blocks of the stream: (n, T)."""
        import torch

        return self.pool[torch.from_numpy(self.take(self.n_replay))]

    def augment(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """``inputs`` (B - n fine-tuning rows) plus ``replay_ids`` (n, T), drawn once per micro-batch."""
        return {**inputs, "replay_ids": self.replay_rows().to(inputs["input_ids"].device)}

    def forward(self, model, inputs: dict[str, Any], hidden_states: bool = False):
        """One forward pass over the fine-tuning rows followed by the replay rows: (B, T) in all."""
        import torch

        ids = torch.cat([inputs["input_ids"], inputs["replay_ids"]])
        return model(input_ids=ids, output_hidden_states=hidden_states)

    def mixed_loss(self, logits, inputs: dict[str, Any]):
        """``(1 - rho) CE(current rows) + rho D(replay rows)`` from the logits (B, T, V) of :meth:`forward`."""
        m, rho = len(inputs["input_ids"]), self.config.replay_ratio
        logits = logits[:, :-1]  # (B, T-1, V): position t predicts token t + 1
        ce_cur = token_ce(logits[:m], inputs["labels"][:, 1:])
        return (1 - rho) * ce_cur + rho * self.replay_term(logits[m:], inputs)

    def replay_term(self, logits, inputs: dict[str, Any]):
        """D: the cross-entropy of the replay rows' logits (n, T-1, V) against their data."""
        return token_ce(logits, inputs["replay_ids"][:, 1:])

    def loss(self, model, inputs: dict[str, Any]):
        return self.mixed_loss(self.forward(model, inputs).logits, inputs)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = int(state["cursor"])


@register_method
class ReplayMethod(ReplayBase):
    """Experience replay with the data's labels.

    Settings
    --------
    replay : str, default "wiki-sample"
        The replay corpus (any corpus name), standing in for pre-training data. Not the probe
        (reference) corpus nor the fine-tuning corpus unless ``allow_replay_overlap``.
    replay_ratio : float, default 0.5
        Fraction of every micro-batch taken from the replay corpus (``replay_ratio *
        batch_size`` blocks replace fine-tuning blocks, so a batch keeps ``train.batch_size``
        blocks), and the replay term's weight in the loss.
    allow_replay_overlap : bool, default false
        Allow a replay corpus that is the probe or a fine-tuning corpus (on purpose).
    """

    name = "replay"
    Config = ReplayConfig
