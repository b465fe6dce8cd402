"""One run set-up: what every entry point that trains, probes or times a run needs, built once.

:func:`prepare_run` turns a :class:`~.spec.RunSpec` into a :class:`RunContext`: the device and
dtype, the base model (its attention kernel and dtype as the spec says) and tokenizer, the token
blocks (training, held-out, reference), the method with its own data, and the content
fingerprints of everything read. Training (:mod:`.train`), task sequences (:mod:`.continual`),
landscapes (:mod:`.landscape`), the sweep's preflight and time estimate (:mod:`.sweep`) and the
benchmarks all start here, so a setting is honoured (or refused) the same way everywhere.

Example
-------
>>> ctx = prepare_run(SweepSpec.from_dict({"model": {"name": "tiny-random-llama"}}).expand()[0])  # doctest: +SKIP
>>> ctx.data.train.shape, ctx.inputs["model"]                                                   # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .corpora import split_blocks, token_blocks
from .methods import Method, make_method
from .models import load_model, model_fingerprint
from .precision import probing
from .probes import ProbeData, base_targets
from .spec import RunSpec

__all__ = ["RunContext", "RunData", "prepare_run", "read_inputs", "resolve_device", "load_base", "load_data",
           "check_model"]


def resolve_device(spec: RunSpec) -> tuple[torch.device, torch.dtype]:
    """The device and parameter dtype: CUDA and bfloat16 when present, else CPU and float32.

    Under a multi-GPU launcher, ``auto`` and ``cuda`` mean this process's own GPU (``LOCAL_RANK``).
    """
    name = spec.model.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device = {spec.model.device!r}, but this machine has no CUDA device; "
                          "use model.device = 'auto' or 'cpu'")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    device = torch.device(name)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(spec.model.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def load_base(spec: RunSpec, dtype: torch.dtype | None = None) -> tuple[Any, Any, str]:
    """(base model on the CPU, tokenizer, fingerprint of its weights), as the spec names them."""
    dtype = dtype or resolve_device(spec)[1]
    model, tok = load_model(spec.model.name, dtype, spec.model.attention)
    check_model(spec, model)
    check_trackers(spec)
    return model, tok, model_fingerprint(model)


def _linear_modules(model, targets: str | list[str]) -> dict[str, torch.nn.Linear]:
    """The linear modules LoRA adapts: every one but the output head for 'all-linear', else those
    whose last name part is listed."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    if targets == "all-linear":
        return linears
    return {n: m for n, m in linears.items() if n.rsplit(".", 1)[-1] in targets}


def check_trackers(spec: RunSpec) -> None:
    """Every tracker of ``train.report_to`` is installed (else the Trainer would fail mid-run)."""
    if not spec.train.report_to:
        return
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    missing = [t for t in spec.train.report_to if t not in get_available_reporting_integrations()]
    if missing:
        raise ConfigError(f"train.report_to = {spec.train.report_to!r}: {', '.join(missing)} not installed here; "
                          f"pip install {' '.join(missing)} (or drop it from train.report_to)")


def check_model(spec: RunSpec, model) -> None:
    """Settings that need the model: LoRA targets that exist, a rank no wider than they are."""
    targets = spec.lora.target_modules
    adapted = _linear_modules(model, targets)
    if targets != "all-linear":
        found = {n.rsplit(".", 1)[-1] for n in adapted}
        missing = [t for t in targets if t not in found]
        if missing:
            names = sorted({n.rsplit(".", 1)[-1] for n in _linear_modules(model, "all-linear")})
            raise ConfigError(f"lora.target_modules = {targets!r}: {missing} match no linear module of "
                              f"{spec.model.name!r}; its linear modules are {names}")
    if not adapted:
        raise ConfigError(f"lora.target_modules = {targets!r} adapts nothing in {spec.model.name!r}")
    name, narrowest = min(adapted.items(), key=lambda kv: min(kv[1].in_features, kv[1].out_features))
    width = min(narrowest.in_features, narrowest.out_features)
    if spec.lora.rank > width:
        raise ConfigError(f"lora.rank = {spec.lora.rank} exceeds the width of {name} "
                          f"({narrowest.in_features} -> {narrowest.out_features}): a LoRA rank above "
                          f"{width} adds parameters but no capacity; use lora.rank <= {width}")


@dataclass
class RunData:
    """A run's token blocks: training (N, T), held-out (H, T) and reference (R, T)."""

    train: np.ndarray
    heldout: np.ndarray
    reference: np.ndarray


def load_data(spec: RunSpec, tokenizer, tokenizer_id: str) -> tuple[RunData, dict[str, str]]:
    """The run's blocks from the block cache, and the content fingerprints of the two corpora."""
    d = spec.data
    ft, ft_print = token_blocks(d.dataset, tokenizer, d.seq_len, tokenizer_id, field="data.dataset")
    need = spec.train.batch_size * spec.train.grad_accum
    if len(ft) >= d.heldout_blocks and len(ft) - d.heldout_blocks < need:
        raise ConfigError(
            f"train.batch_size x train.grad_accum = {need} blocks per update, but corpus {d.dataset!r} has "
            f"{len(ft)} blocks of {d.seq_len} tokens and data.heldout_blocks = {d.heldout_blocks} are held out: "
            f"lower train.batch_size, data.heldout_blocks or data.seq_len, or use a larger corpus")
    heldout, train = split_blocks(ft, d.heldout_blocks, d.split_seed, "data.heldout_blocks", d.dataset)
    ref, ref_print = token_blocks(d.reference, tokenizer, d.seq_len, tokenizer_id, field="data.reference")
    reference, _ = split_blocks(ref, d.reference_blocks, d.split_seed, "data.reference_blocks", d.reference)
    return RunData(train, heldout, reference), {"data.dataset": ft_print, "data.reference": ref_print}


@dataclass
class RunContext:
    """Everything a run reads, loaded once (see :func:`prepare_run`)."""

    spec: RunSpec
    device: torch.device
    dtype: torch.dtype
    model: Any  # the base model, on ``device``; the method wraps it (``method.build_model``)
    tokenizer: Any
    model_key: str  # fingerprint of the base model's weights: the key of its caches
    data: RunData
    method: Method
    inputs: dict[str, str] = field(default_factory=dict)  # what was read -> content fingerprint

    @cached_property
    def probe_data(self) -> ProbeData:
        """The probes' blocks and the base model's greedy targets (computed once, cached on disk).

        Call before the method wraps the model: the targets are the base model's predictions.
        """
        ref = torch.from_numpy(self.data.reference)
        with probing(self.model, self.spec.probe.precision) as precision:
            targets = base_targets(self.model, ref, self.model_key, self.spec.probe.batch_size, precision=precision)
        return ProbeData(ref, targets, torch.from_numpy(self.data.heldout))


def read_inputs(spec: RunSpec, tokenizer, model_key: str) -> tuple[RunData, Method, dict[str, str]]:
    """The run's blocks, its method with the method's own data, and the content fingerprint of
    everything the run reads (``model``, ``data.dataset``, ``data.reference``, ``method.*``)."""
    data, inputs = load_data(spec, tokenizer, model_key)
    method = make_method(spec)
    return data, method, {"model": model_key, **inputs, **method.prepare_data(tokenizer, model_key)}


def prepare_run(spec: RunSpec, device: torch.device | None = None) -> RunContext:
    """Load and check everything ``spec`` reads; raise :class:`ConfigError` before any work if
    a setting cannot be honoured. The model is moved to ``device`` (default: the spec's)."""
    resolved, dtype = resolve_device(spec)
    model, tok, key = load_base(spec, dtype)
    data, method, inputs = read_inputs(spec, tok, key)
    device = device or resolved
    return RunContext(spec, device, dtype, model.to(device), tok, key, data, method, inputs)
