"""One run: fine-tuning on ``transformers.Trainer`` with probes on a schedule -> rows.

The run's method (:mod:`forgetting_laws.measure.methods`) builds the adapter and the Trainer, says
which model the probes evaluate and checkpoints its own extra state; nothing here depends on
which method it is.

The :class:`ProbeCallback` probes at step 0 and at every scheduled step, appends one row per
probe, writes the rows so far and asks the Trainer to checkpoint at the same step, so an
interrupted run resumes from its last probe (adapter, optimiser, scheduler, RNG, data position)
and its final table equals an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from .. import __version__
from .compiling import (CompilePlan, eager_probes, mark_compiled, plan_compile, prepare_for_compile, record,
                        unpad_lora)
from .config import RunSpec
from .corpora import split_blocks, token_blocks
from .distributed import accumulation_per_device, is_main_process, world_size
from .methods import Method, make_method
from .models import load_model, model_fingerprint
from .probes import ProbeData, base_probe, base_targets, probe
from ..store import SCHEMA_VERSION, write_json, write_rows

__all__ = ["run_one", "RunResult", "resolve_device", "prepare_data", "build_trainer", "save_adapter",
           "adapter_spec"]

COMPLETE_MARKER = ".complete"
#: The run spec saved beside an adapter (``save_adapter``), read back by :func:`adapter_spec`.
ADAPTER_SPEC = "forgetting_laws.json"
_OPTIMIZERS = {"adamw": "adamw_torch", "adafactor": "adafactor", "sgd": "sgd"}


@dataclass
class RunResult:
    run_id: str
    status: str  # "complete" | "diverged"
    rows: int
    wall_s: float


def resolve_device(spec: RunSpec) -> tuple[torch.device, torch.dtype]:
    """The device and parameter dtype: CUDA and bfloat16 when present, else CPU and float32.

    Under a multi-GPU launcher, ``auto`` and ``cuda`` mean this process's own GPU (``LOCAL_RANK``).
    """
    name = spec.model.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    device = torch.device(name)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(spec.model.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


class BlockDataset(torch.utils.data.Dataset):
    """Packed token blocks as causal-LM examples (labels = inputs; the model shifts them)."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = torch.from_numpy(blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def prepare_data(spec: RunSpec, tokenizer, tokenizer_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train blocks, held-out blocks, reference blocks) of a run, from the block cache."""
    d = spec.data
    ft = token_blocks(d.dataset, tokenizer, d.seq_len, tokenizer_id, field="data.dataset")
    need = spec.train.batch_size * spec.train.grad_accum
    heldout, train = split_blocks(ft, d.heldout_blocks, d.split_seed, "data.heldout_blocks",
                                  d.dataset, min_rest=need)
    ref = token_blocks(d.reference, tokenizer, d.seq_len, tokenizer_id, field="data.reference")
    reference, _ = split_blocks(ref, d.reference_blocks, d.split_seed, "data.reference_blocks", d.reference)
    return train, heldout, reference


def _adapter_is_inert(model) -> bool:
    """True when every LoRA B matrix is zero, so the model computes exactly the base model."""
    bs = [p for n, p in model.named_parameters() if "lora_B" in n]
    return bool(bs) and all(not p.any() for p in bs)


class StepTimer(TrainerCallback):
    """Wall time of each optimiser step (probes and checkpoints excluded): the cost model's data."""

    def __init__(self):
        self.times: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t0)


class ProbeCallback(TrainerCallback):
    """Probe on the schedule, keep rows, checkpoint at each probe, stop on a non-finite loss."""

    def __init__(self, model, data: ProbeData, spec: RunSpec, base_row: dict, rows: list[dict],
                 rows_path: Path, wall_offset: float, on_step: Callable[[int], None] | None = None,
                 probe_context: Callable[[Any], ContextManager] | None = None,
                 on_checkpoint: Callable[[Path], None] | None = None, probers: list = ()):
        self.model, self.data, self.spec = model, data, spec
        self.probers = list(probers)  # lm_eval / refusal probes, each on its own steps
        self.probe_context = probe_context or (lambda m: contextlib.nullcontext(m))
        self.on_checkpoint = on_checkpoint
        self.schedule = set(spec.probe.schedule(spec.train.max_steps))
        self.base_row, self.rows, self.rows_path = base_row, rows, rows_path
        self.t0 = time.perf_counter() - wall_offset
        self.losses: list[float] = []
        self.diverged = False
        self.on_step = on_step

    def record(self, step: int) -> None:
        p = self.spec.probe
        with self.probe_context(self.model) as model:  # the adapter the method wants probed
            inert = step == 0 and _adapter_is_inert(model)
            if inert:
                metrics = base_probe(model, self.data, p.batch_size, p.forget_kl)
            else:
                metrics = probe(model, self.data, p.batch_size, p.forget_kl)
            downstream = _downstream(self.probers, model, step, inert)
        t = self.spec.train
        row = {**self.base_row, **metrics, **downstream, "step": step,
               "tokens_seen": step * t.batch_size * t.grad_accum * self.spec.data.seq_len,
               "ft_train_loss": float(np.mean(self.losses)) if self.losses else float("nan"),
               "wall_s": time.perf_counter() - self.t0}
        self.rows.append(row)
        self.losses = []
        if is_main_process():  # under a launcher every rank probes (same values), rank 0 writes
            write_rows(self.rows_path, self.rows)
        if not all(math.isfinite(v) for k, v in metrics.items() if k != "forget_kl" or self.spec.probe.forget_kl):
            self.diverged = True

    def on_train_begin(self, args, state, control, **kw):
        if not any(r["step"] == 0 for r in self.rows):
            self.record(0)

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "loss" not in logs:
            return control
        self.losses.append(float(logs["loss"]))
        step = state.global_step
        if self.on_step:
            self.on_step(step)
        if not math.isfinite(logs["loss"]):
            self.diverged = True
        if step in self.schedule or self.diverged:
            self.record(step)
            control.should_save = not self.diverged
        if self.diverged:
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kw):
        # The Trainer writes checkpoints in place: mark one complete only once it is all on disk,
        # then drop older ones, so a kill at any moment leaves a loadable checkpoint (or none).
        current = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not is_main_process():
            return control
        if self.on_checkpoint:
            self.on_checkpoint(current)  # the method's own state, before the checkpoint counts
        (current / COMPLETE_MARKER).touch()
        for old in Path(args.output_dir).glob("checkpoint-*"):
            if old != current:
                shutil.rmtree(old, ignore_errors=True)
        return control


def _downstream(probers: list, model, step: int, inert: bool) -> dict[str, float]:
    """The lm_eval probes' columns at ``step``: measured on their steps, NaN elsewhere.

    With an inert adapter (step 0) the model is the base model, whose results are already known.
    They run eagerly even in a compiled run: their shapes change with every prompt and token.
    """
    row: dict[str, float] = {}
    for prober in probers:
        if step not in prober.steps:
            row.update(dict.fromkeys(prober.columns, float("nan")))
        else:
            with torch.compiler.set_stance("force_eager"):
                row.update(prober.base_row() if inert else prober.measure(model))
    return row


def _training_args(spec: RunSpec, out: Path, device: torch.device, dtype: torch.dtype,
                   batch_size: int) -> TrainingArguments:
    """Trainer arguments: the spec's optimisation, plus the GPU path when ``device`` is CUDA.

    On CUDA: bf16 autocast (with bfloat16 parameters), pinned host memory for the batches.
    The blocks are already token ids in memory, so loader worker processes would only add
    start-up cost (``dataloader_num_workers=0``). Under ``torchrun``/``accelerate launch`` the
    update's ``grad_accum`` micro-batches are split over the devices.
    """
    t = spec.train
    cuda = device.type == "cuda"
    return TrainingArguments(
        output_dir=str(out), max_steps=t.max_steps, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation_per_device(t.batch_size, t.grad_accum, world_size()),
        learning_rate=t.lr, lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps, optim=_OPTIMIZERS[t.optimizer], weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, seed=t.seed, data_seed=t.seed,
        logging_steps=1, logging_nan_inf_filter=False, save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=device.type == "cpu",
        bf16=dtype == torch.bfloat16 and cuda, dataloader_num_workers=0, dataloader_pin_memory=cuda,
        **_checkpointing_args(t.gradient_checkpointing),
        ddp_find_unused_parameters=False,  # every LoRA parameter gets a gradient at every step
        remove_unused_columns=False,
    )


def _checkpointing_args(on: bool) -> dict:
    """Activation (gradient) checkpointing arguments, under the name this transformers uses."""
    if not on:
        return {}
    # non-reentrant checkpointing needs no input gradients through the frozen embeddings
    kwargs = {"use_reentrant": False}
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__:  # transformers >= 5
        return {"activation_checkpointing": True, "activation_checkpointing_kwargs": kwargs}
    return {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": kwargs}


def _last_checkpoint(ckpt_dir: Path) -> tuple[Path | None, int]:
    found = [(int(p.name.split("-")[1]), p) for p in ckpt_dir.glob("checkpoint-*")
             if p.name.split("-")[1].isdigit() and (p / COMPLETE_MARKER).exists()]
    if not found:
        return None, 0
    step, path = max(found)
    return path, step


def _resume_rows(rows_path: Path, ckpt_step: int) -> list[dict]:
    """Rows written before the last checkpoint (rows after it will be probed again)."""
    if not rows_path.exists():
        return []
    import pandas as pd

    frame = pd.read_parquet(rows_path)
    return frame[frame["step"] <= ckpt_step].to_dict("records")


def _base_row(spec: RunSpec, run_id: str, trainable: int, method: Method) -> dict:
    return {"run_id": run_id, "sweep": spec.sweep.name, "method": method.name, "model": spec.model.name,
            "dataset": spec.data.dataset, "reference": spec.data.reference, "seed": spec.train.seed,
            "rank": spec.lora.rank, "trainable_params": trainable, "lr": spec.train.lr,
            "lora_alpha": spec.lora.alpha, "schema_version": SCHEMA_VERSION, **method.extra_columns()}


def build_trainer(spec: RunSpec, method: Method, model, train: np.ndarray, out: Path,
                  callbacks: list = (), device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> Trainer:
    """The method's Trainer for ``model`` on the training blocks (N, T), checkpointing into ``out``."""
    device = device or torch.device("cpu")
    args = _training_args(spec, out, device, dtype, method.train_batch_size())
    if spec.train.gradient_checkpointing:
        model.enable_input_require_grads()  # also correct if a method turns on reentrant checkpoints
    trainer = method.build_trainer(model=model, args=args, train_dataset=BlockDataset(train),
                                   callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # rows and progress bars report instead
    return trainer


def save_adapter(model, method: Method, path: Path, spec: RunSpec) -> Path:
    """Save the adapter the probes evaluate (PEFT safetensors) and ``spec`` beside it, atomically.

    For I-LoRA that is the slow adapter (``method.probe_model``). Landscape analyses
    (:mod:`forgetting_laws.measure.landscape`) load the folder back with :func:`adapter_spec`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with method.probe_model(model) as probed:
        probed.save_pretrained(tmp)
    write_json(tmp / ADAPTER_SPEC, {"spec": spec.to_dict(), "method": method.name})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def adapter_spec(path: str | Path) -> RunSpec:
    """The run spec saved beside an adapter by :func:`save_adapter` (model, corpora, LoRA)."""
    from .config import SweepSpec
    from ..errors import ConfigError

    meta = Path(path) / ADAPTER_SPEC
    if not meta.is_file():
        raise ConfigError(f"adapter {str(path)!r} has no {ADAPTER_SPEC}: pass a folder written by "
                          "`forgetting-laws continual` or by a sweep with [train] save_adapter = true")
    raw = json.loads(meta.read_text())["spec"]
    return SweepSpec.from_dict(raw).expand()[0]


def _meta(spec: RunSpec, status: str, **extra) -> dict:
    import peft
    import transformers

    return {"run_id": spec.run_id, "status": status, "spec": spec.to_dict(),
            "versions": {"forgetting_laws": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__, "peft": peft.__version__,
                         "python": platform.python_version()}, **extra}


def _compile_plan(plan: CompilePlan | None, spec: RunSpec, ckpt: Path | None) -> CompilePlan:
    """The run's plan; a resumed run keeps the padding its checkpoint was written with."""
    plan = dataclasses.replace(plan) if plan else plan_compile([spec])[spec.run_id]
    saved = ckpt / "compile.json" if ckpt else None
    if saved and saved.exists():
        plan.pad_rank = json.loads(saved.read_text())["pad_rank"]
    return plan


def _probe_context(method: Method, plan: CompilePlan):
    @contextlib.contextmanager
    def context(model):
        with eager_probes(plan), method.probe_model(model) as probed:
            yield probed
    return context


def _make_probers(spec: RunSpec, base_model, tokenizer, model_key: str) -> list:
    """The run's lm_eval probes, with the base model's answers (before any adapter exists)."""
    if spec.probe.lm_eval is None and spec.probe.refusal is None:
        return []
    from .evals import make_probers

    probers = make_probers(spec, tokenizer, model_key)
    for prober in probers:
        prober.prepare(base_model)
    return probers


def run_one(spec: RunSpec, runs_dir: Path, on_step: Callable[[int], None] | None = None,
            compile_plan: CompilePlan | None = None) -> RunResult:
    """Run (or resume) one fine-tuning run and write ``<run_id>.parquet`` and ``.json``.

    Parameters
    ----------
    spec
        The resolved run.
    runs_dir
        RUNS_DIR; checkpoints live in ``RUNS_DIR/.checkpoints/<run_id>`` until the run ends;
        with ``train.save_adapter`` the final adapter stays in ``RUNS_DIR/adapters/<run_id>/``.
    on_step
        Called with the global step after every update (progress bars).
    compile_plan
        Whether to compile and the rank to pad to, from the sweep's :func:`plan_compile`
        (which compiles once for many runs); by default this run is planned on its own.
    """
    runs_dir = Path(runs_dir)
    run_id = spec.run_id
    ckpt_dir = runs_dir / ".checkpoints" / run_id
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    main = is_main_process()
    if main:
        write_json(runs_dir / f"{run_id}.json", _meta(spec, "running"))
    device, dtype = resolve_device(spec)

    method = make_method(spec)
    model, tok = load_model(spec.model.name, dtype, spec.model.attention)
    key = model_fingerprint(model)
    train, heldout, reference = prepare_data(spec, tok, key)
    method.prepare_data(tok, key)
    model.to(device)
    ref_t = torch.from_numpy(reference)
    data = ProbeData(ref_t, base_targets(model, ref_t, key, spec.probe.batch_size), torch.from_numpy(heldout))
    probers = _make_probers(spec, model, tok, key)
    model = method.build_model(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    ckpt, ckpt_step = _last_checkpoint(ckpt_dir)
    plan = _compile_plan(compile_plan, spec, ckpt)
    true_ranks = prepare_for_compile(model, plan)  # before the method's state (padded) is loaded

    def on_checkpoint(path: Path) -> None:
        method.save_state(path)
        (path / "compile.json").write_text(json.dumps({"pad_rank": plan.pad_rank}))

    if ckpt:
        method.load_state(ckpt)
    rows = _resume_rows(ckpt_dir / "rows.parquet", ckpt_step)
    wall_offset = rows[-1]["wall_s"] if rows else 0.0
    callback = ProbeCallback(model, data, spec, _base_row(spec, run_id, trainable, method), rows,
                             ckpt_dir / "rows.parquet", wall_offset, on_step,
                             probe_context=_probe_context(method, plan), on_checkpoint=on_checkpoint,
                             probers=probers)
    timer = StepTimer()
    trainer = build_trainer(spec, method, model, train, ckpt_dir, [callback, timer], device, dtype)
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    record(spec, plan, timer.times, per_rank=trainable / spec.lora.rank / max(frozen, 1))
    mark_compiled(plan)

    status = "diverged" if callback.diverged else "complete"
    if main and spec.train.save_adapter:
        if true_ranks:  # a compiled run's adapter was padded; it is saved at its own rank
            unpad_lora(model, true_ranks)
        save_adapter(model, method, runs_dir / "adapters" / run_id, spec)
    wall = callback.rows[-1]["wall_s"]
    if main:
        write_rows(runs_dir / f"{run_id}.parquet", callback.rows)
        write_json(runs_dir / f"{run_id}.json", _meta(spec, status, trainable_params=trainable, wall_s=wall,
                                                       device=str(device), dtype=str(dtype),
                                                       world_size=world_size(), compiled=plan.compile,
                                                       compile_reason=plan.reason))
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return RunResult(run_id, status, len(callback.rows), wall)
