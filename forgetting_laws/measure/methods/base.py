"""The contract of a fine-tuning method, and the knobs a method declares.

A method is chosen in a spec by ``[method] name = "..."``; its knobs live in the same table.
Importing this module does not import torch: specs are validated without a training stack.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

from ...errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - type hints only
    from transformers import Trainer

    from ..config import RunSpec

__all__ = ["Knob", "Method"]


@dataclass(frozen=True)
class Knob:
    """One setting of a method: ``[method] <name> = value``, stored in the column ``column``.

    Parameters
    ----------
    name
        Field name in the ``[method]`` table.
    default
        Value when the spec does not give one.
    help
        One line shown in errors and docs.
    column
        Parquet column the value is recorded in (e.g. ``sam_rho``).
    check
        ``check(value) -> None`` if valid, else the reason (``"must be >= 0"``).
    choices
        The allowed values, when the knob is a choice.
    """

    name: str
    default: Any
    help: str
    column: str
    check: Callable[[Any], str | None] | None = None
    choices: tuple | None = None

    def coerce(self, value: Any) -> Any:
        """Check ``value``'s type and range; return it (ints are accepted for floats)."""
        where = f"method.{self.name} = {value!r}"
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{where} has type {type(value).__name__}, expected {kind.__name__}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where}; allowed values: {', '.join(map(repr, self.choices))}")
        reason = self.check(value) if self.check else None
        if reason:
            raise ConfigError(f"{where}, {reason} ({self.help})")
        return value


class Method(ABC):
    """A fine-tuning method: how the adapter is built, trained, probed and checkpointed.

    A subclass sets ``name`` and ``knobs`` and provides :meth:`build_model` and
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
    knobs: ClassVar[tuple[Knob, ...]] = ()
    #: cost of one update relative to plain LoRA's (for ``sweep --dry-run`` estimates)
    step_cost: ClassVar[float] = 1.0

    def __init__(self, spec: "RunSpec"):
        self.spec = spec
        self.params = spec.method.resolved()  # own knobs, defaults filled in

    # ------------------------------------------------------------------ validation (no torch)

    @classmethod
    def check_run(cls, spec: "RunSpec") -> None:
        """Check knob values against the rest of the run (e.g. the batch size); raise ConfigError."""

    # ------------------------------------------------------------------ training

    def prepare_data(self, tokenizer, tokenizer_id: str) -> None:
        """Tokenise what the method needs besides the run's corpora (a replay corpus)."""

    @abstractmethod
    def build_model(self, model):
        """Wrap the base ``model`` with the trainable adapter(s); return the model to train."""

    @abstractmethod
    def build_trainer(self, **trainer_kwargs: Any) -> "Trainer":
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
        """The method's knobs as parquet columns (only its own knobs)."""
        return {k.column: self.params[k.name] for k in self.knobs}

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
