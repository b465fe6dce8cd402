"""The contract of a fine-tuning method, the typed settings a method declares, and the one Trainer.

A method is chosen in a spec by ``[method] name = "..."``; its settings live in the same table
and are the fields of the method's ``Config`` dataclass, declared with
:func:`forgetting_laws.measure.config.option` (default, help, check, and the parquet ``column``
the value is recorded in). Importing this module does not import torch: specs are validated
without a training stack.

Every method trains with one Trainer class (:func:`method_trainer`) that calls the method's
hooks: :meth:`Method.augment` once per micro-batch (a replaying method adds its replay rows),
then the update step (:meth:`update_step`, which an *update rule* such as SAM overrides), with
:meth:`Method.loss` as the loss. Because the rows are drawn before the update step, an update
rule that evaluates the loss twice sees the same rows both times, and update rules compose with
any *objective* (``method.name = ["sam", "replay"]``, :mod:`forgetting_laws.measure.methods`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal

__all__ = ["Method", "NoSettings", "method_trainer"]


@dataclass
class NoSettings:
    """The settings of a method that has none (plain LoRA)."""


class Method(ABC):
    """A fine-tuning method: how the adapter is built, trained, probed and checkpointed.

    A subclass sets ``name`` and ``Config`` (its settings dataclass) and provides
    :meth:`build_model`; the other hooks have defaults that fit plain LoRA. ``train.run_one``
    calls them in this order::

        method = make_method(spec)
        method.prepare_data(tokenizer, tokenizer_id)    # e.g. the replay corpus
        model = method.build_model(base_model)           # trainable params = P
        method.load_state(checkpoint)                    # on resume only
        trainer = method.build_trainer(model=..., args=..., train_dataset=..., callbacks=...)
        # each micro-batch: inputs = method.augment(batch); loss = method.loss(model, inputs)
        ...  # probes run inside ``with method.probe_model(model):``
        ...  # at each checkpoint: method.save_state(checkpoint_dir)

    ``role`` says how a method composes: an ``"objective"`` defines the adapter, the data and the
    loss (``lora``, ``replay``, ``distill``, ``ilora``); an ``"update"`` rule defines how the
    optimiser step is taken from that loss (``sam``) and provides :meth:`wrap_trainer`. One
    update rule composes with one objective; two objectives do not compose.

    Rules: method logic stays in the method's file; a method's state that the Trainer does not
    checkpoint itself (a second adapter, a replay buffer, counters) must round-trip through
    :meth:`state_dict` / :meth:`load_state_dict`, so a resumed run equals an uninterrupted one;
    tensors kept in the LoRA parameters' shapes are declared by :meth:`lora_copies`.
    """

    name: ClassVar[str]
    Config: ClassVar[type] = NoSettings
    role: ClassVar[Literal["objective", "update"]] = "objective"
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

    def build_trainer(self, **trainer_kwargs: Any) -> "Trainer":
        """The method's ``transformers.Trainer``, built with ``trainer_kwargs``."""
        return self.trainer_class()(method=self, **trainer_kwargs)

    def trainer_class(self) -> type:
        """The Trainer class; :func:`method_trainer` unless an update rule wraps it."""
        return method_trainer()

    @classmethod
    def wrap_trainer(cls, trainer_class: type) -> type:
        """An update rule's Trainer over an objective's ``trainer_class`` (overrides ``update_step``)."""
        raise NotImplementedError(f"method {cls.name!r} is an objective, not an update rule")

    def augment(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The micro-batch the loss reads, built once per micro-batch before any forward pass
        (a replaying method adds its replay rows and their targets). Unchanged by default."""
        return inputs

    def loss(self, model, inputs: dict[str, Any]):
        """The training loss of an augmented micro-batch, a mean over it (the Trainer divides it by
        the accumulation steps); ``None``: the model's own loss on ``inputs["labels"]``."""
        return None

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

    def lora_copies(self) -> list[dict[str, Any]]:
        """Tensors the method keeps beside the model in the shapes of the LoRA parameters, keyed by
        parameter name (I-LoRA's slow adapter). Compiled training pads and unpads them with the
        model's LoRA (:func:`forgetting_laws.measure.compiling.compiled`). None by default."""
        return []

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


@functools.cache
def method_trainer() -> type:
    """``MethodTrainer``, the Trainer of every method, built on first use (importing this module
    needs no torch)."""
    from transformers import Trainer

    class MethodTrainer(Trainer):
        """``transformers.Trainer`` calling its method's hooks (see the module docstring)."""

        def __init__(self, *args: Any, method: Method, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.method = method
            if type(method).loss is not Method.loss:
                self.loss_is_scaled_for_ga = False  # a per-micro-batch mean: the Trainer divides by GA

        def training_step(self, model, inputs, num_items_in_batch=None):
            augmented = self.method.augment(inputs)
            if augmented is not inputs:
                # the Trainer's token count covers the fine-tuning rows only: the loss is a mean
                # over the augmented micro-batch instead, divided by the accumulation steps
                num_items_in_batch = None
            return self.update_step(model, augmented, num_items_in_batch)

        def update_step(self, model, inputs, num_items_in_batch=None):
            """Forward, backward (and for an update rule, more): the stock training step."""
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = self.method.loss(model, inputs)
            if loss is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return (loss, None) if return_outputs else loss

    return MethodTrainer
