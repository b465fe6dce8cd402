"""The contract of a fine-tuning method, and the typed settings a method declares.

A method is chosen in a spec by ``[method] name = "..."``; its settings live in the same table
and are the fields of the method's ``Config`` dataclass, declared with
:func:`forgetting_laws.measure.config.option` (default, help, check, and the parquet ``column``
the value is recorded in). Importing this module does not import torch: specs are validated
without a training stack.
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

__all__ = ["Method", "NoSettings"]


@dataclass
class NoSettings:
    """The settings of a method that has none (plain LoRA)."""


class Method(ABC):
    """A fine-tuning method: how the adapter is built, trained, probed and checkpointed.

    A subclass sets ``name`` and ``Config`` (its settings dataclass) and provides :meth:`build_model` and
    :meth:`build_trainer`; the other hooks have defaults that fit plain LoRA. ``train.run_one``
    calls them in this order::

        method = make_method(spec)
        method.prepare_data(tokenizer, tokenizer_id)    # e.g. the replay corpus
        model = method.build_model(base_model)           # trainable params = P
        method.load_state(checkpoint)                    # on resume only
        trainer = method.build_trainer(model=..., args=..., train_dataset=..., callbacks=...)
        ...  # probes run inside ``with method.probe_model(model):``
        ...  # at each checkpoint: method.save_state(checkpoint_dir)

    Rules: method logic stays in the method's file; a method's state that the Trainer does not
    checkpoint itself (a second adapter, a replay buffer, counters) must round-trip through
    :meth:`state_dict` / :meth:`load_state_dict`, so a resumed run equals an uninterrupted one.
    """

    name: ClassVar[str]
    Config: ClassVar[type] = NoSettings
    #: cost of one update relative to plain LoRA's (for ``sweep --dry-run`` estimates)
    step_cost: ClassVar[float] = 1.0

    def __init__(self, spec):
        self.spec = spec  # the run's RunSpec
        self.config = spec.method.config  # the method's own settings (a ``Config`` instance)

    # ------------------------------------------------------------------ validation (no torch)

    @classmethod
    def check_run(cls, spec) -> None:
        """Check the settings against the rest of the run (e.g. the batch size); raise ConfigError."""

    # ------------------------------------------------------------------ training

    def prepare_data(self, tokenizer, tokenizer_id: str) -> dict[str, str]:
        """Tokenise what the method needs besides the run's corpora (a replay corpus); return the
        content fingerprint of each extra input by its setting (``{"method.replay": ...}``), which
        joins the run's identity. Nothing by default."""
        return {}

    @abstractmethod
    def build_model(self, model):
        """Wrap the base ``model`` with the trainable adapter(s); return the model to train."""

    @abstractmethod
    def build_trainer(self, **trainer_kwargs: Any) -> Any:
        """A ``transformers.Trainer`` (or subclass) built with ``trainer_kwargs``."""

    def train_batch_size(self) -> int:
        """Blocks of the fine-tuning corpus per micro-batch (replay methods take fewer)."""
        return self.spec.train.batch_size

    # ------------------------------------------------------------------ probes and rows

    @contextlib.contextmanager
    def probe_model(self, model) -> Iterator[Any]:
        """Context in which ``model`` computes what the probes should evaluate."""
        yield model

    def extra_columns(self) -> dict[str, Any]:
        """The method's settings as parquet columns (only its own)."""
        return {f.metadata["column"]: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}

    # ------------------------------------------------------------------ task sequences

    def end_task(self, train_blocks) -> None:
        """Called by :mod:`forgetting_laws.measure.continual` after each task of a sequence, with that
        task's training blocks (N, T) as a numpy array; a method that carries earlier tasks into
        later ones (a replay pool) takes them here. Nothing by default."""

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """State the Trainer does not checkpoint (tensors, numbers, lists); empty by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def save_state(self, checkpoint: Path) -> None:
        """Write :meth:`state_dict` into a Trainer checkpoint folder (nothing if it is empty)."""
        state = self.state_dict()
        if state:
            import torch

            torch.save(state, Path(checkpoint) / "method_state.pt")

    def load_state(self, checkpoint: Path) -> None:
        """Read what :meth:`save_state` wrote; a method with state refuses a checkpoint without it."""
        path = Path(checkpoint) / "method_state.pt"
        if path.exists():
            import torch

            self.load_state_dict(torch.load(path, weights_only=True))
        elif self.state_dict():
            raise FileNotFoundError(f"checkpoint {checkpoint} has no method_state.pt for method {self.name!r}")
