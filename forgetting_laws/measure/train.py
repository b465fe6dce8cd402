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
import json
import math
import os
import platform
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from .. import __version__
from ..store import (SCHEMA_VERSION, CorruptFile, adapter_path, move_aside, read_meta, read_rows, sidecar_path,
                     write_json, write_rows)
from .compiling import compiled, wants_compile
from .distributed import accumulation_per_device, is_main_process, world_size
from .methods import Method, setting_columns
from .precision import probing
from .probes import ProbeData, base_probe, probe
from .setup import RunContext, prepare_run
from .spec import RunSpec

__all__ = ["run_one", "RunResult", "build_trainer", "save_adapter", "adapter_spec", "verify_checkpoint"]

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


class BlockDataset(torch.utils.data.Dataset):
    """Packed token blocks as causal-LM examples (labels = inputs; the model shifts them)."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = torch.from_numpy(blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def _adapter_is_inert(model) -> bool:
    """True when every LoRA B matrix is zero, so the model computes exactly the base model."""
    bs = [p for n, p in model.named_parameters() if "lora_B" in n]
    return bool(bs) and all(not p.any() for p in bs)


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
        self.trainer = None  # set by the run once its Trainer exists: the probes are logged through it
        self.on_step = on_step

    def record(self, step: int) -> None:
        p = self.spec.probe
        # the adapter the method wants probed, in the probes' precision
        with self.probe_context(self.model) as model, probing(model, p.precision) as precision:
            inert = step == 0 and _adapter_is_inert(model)
            if inert:
                metrics = base_probe(model, self.data, p.batch_size, p.forget_kl, precision)
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
        if self.trainer is not None and self.spec.train.report_to:  # the probes go to the trackers too
            self.trainer.log({f"probe/{k}": v for k, v in {**metrics, **downstream}.items() if math.isfinite(v)})
        if is_main_process():  # under a launcher every rank probes (same values), rank 0 writes
            write_rows(self.rows_path, self.rows, row_dtypes())
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

    With bfloat16 parameters (on CUDA, or on a CPU with bfloat16 matrix instructions): bf16
    autocast for the forward and backward, the LoRA weights, their gradients and the optimiser
    state in float32 (PEFT keeps adapters in float32), the loss reduced in float32. On CUDA, pinned
    host memory for the batches.
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
        report_to=list(t.report_to) or "none", run_name=spec.run_id, project=spec.sweep.name,
        disable_tqdm=True, use_cpu=device.type == "cpu",
        bf16=dtype == torch.bfloat16, dataloader_num_workers=0, dataloader_pin_memory=cuda,
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


def verify_checkpoint(path: Path) -> None:
    """Read every file of a Trainer checkpoint; raise :class:`CorruptFile` naming the first bad one.

    A checkpoint is small (the adapter, its optimiser state, RNG states), so reading it whole
    costs little beside a run, and a truncated file is caught here instead of deep inside the
    Trainer with an error that names no path.
    """
    from safetensors.torch import load_file

    for f in sorted(Path(path).iterdir()):
        try:
            if f.suffix == ".safetensors":
                load_file(f)
            elif f.suffix in (".pt", ".pth", ".bin"):
                torch.load(f, weights_only=False, map_location="cpu")
            elif f.suffix == ".json":
                json.loads(f.read_text())
        except Exception as exc:  # any reader's failure means the same thing: the file is unusable
            raise CorruptFile(f, f"{type(exc).__name__}: {exc}".splitlines()[0]) from None


def _resume_point(runs_dir: Path, run_id: str, ckpt_dir: Path, inputs: dict) -> tuple[Path | None, list[dict]]:
    """The checkpoint to resume from and the rows written before it, or (None, []) for a fresh start.

    A checkpoint or rows file that does not read back is moved aside (named in a warning); so is
    one written from other inputs (the run's sidecar recorded other fingerprints).
    """
    ckpt, step = _last_checkpoint(ckpt_dir)
    if ckpt is None:
        return None, []
    recorded = (read_meta(sidecar_path(runs_dir, run_id)) or {}).get("inputs")
    try:
        if recorded is not None and recorded != inputs:
            raise CorruptFile(ckpt, "written from other inputs than the run reads now (a corpus or the model "
                                    "changed)")
        verify_checkpoint(ckpt)
        frame = read_rows(ckpt_dir / "rows.parquet")
    except CorruptFile as exc:
        moved = move_aside(ckpt_dir, runs_dir)
        warnings.warn(f"run {run_id}: {exc}; the checkpoints were moved to {moved} and the run starts again",
                      stacklevel=2)
        return None, []
    return ckpt, frame[frame["step"] <= step].to_dict("records")


def row_dtypes() -> dict[str, str]:
    """Dtypes of the columns every run writes beyond the schema: its precision and every method's
    settings (empty where not its own), so all result files of a folder share their columns."""
    return {"dtype": "string", "probe_precision": "string", **setting_columns()}


def _base_row(spec: RunSpec, run_id: str, trainable: int, method: Method) -> dict:
    return {"run_id": run_id, "sweep": spec.sweep.name, "method": method.name, "model": spec.model.name,
            "dataset": spec.data.dataset, "reference": spec.data.reference, "seed": spec.train.seed,
            "rank": spec.lora.rank, "trainable_params": trainable, "lr": spec.train.lr,
            "lora_alpha": spec.lora.alpha, "schema_version": SCHEMA_VERSION, "dtype": spec.model.dtype,
            "probe_precision": spec.probe.precision, **dict.fromkeys(setting_columns()), **method.extra_columns()}


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
    from .spec import SweepSpec
    from ..errors import ConfigError

    meta = Path(path) / ADAPTER_SPEC
    if not meta.is_file():
        raise ConfigError(f"adapter {str(path)!r} has no {ADAPTER_SPEC}: pass a folder written by "
                          "`forgetting-laws continual` or by a sweep with [train] save_adapter = true")
    raw = json.loads(meta.read_text())["spec"]
    return SweepSpec.from_dict(raw).expand()[0]


def _meta(spec: RunSpec, status: str, inputs: dict, **extra) -> dict:
    import peft
    import transformers

    return {"run_id": spec.run_id, "status": status, "spec": spec.to_dict(), "inputs": inputs,
            "versions": {"forgetting_laws": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__, "peft": peft.__version__,
                         "python": platform.python_version()}, **extra}


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
            pad_rank: int | None = None) -> RunResult:
    """Run (or resume) one fine-tuning run and write ``<run_id>.parquet`` and ``.json``.

    Parameters
    ----------
    spec
        The resolved run.
    runs_dir
        RUNS_DIR; checkpoints live in ``RUNS_DIR/.checkpoints/<run_id>`` until the run ends;
        with ``train.save_adapter`` the final adapter stays in ``RUNS_DIR/_adapters/<run_id>/``.
    on_step
        Called with the global step after every update (progress bars).
    pad_rank
        When the run compiles (``train.compile``), the rank its LoRA is padded to so that the
        sweep's runs share one compiled graph (:func:`compiling.pad_ranks`); default its own.
    """
    ctx = prepare_run(spec)  # every setting checked before anything is written
    runs_dir = Path(runs_dir)
    run_id = spec.run_id
    ckpt_dir = runs_dir / ".checkpoints" / run_id
    main = is_main_process()
    ckpt, rows = _resume_point(runs_dir, run_id, ckpt_dir, ctx.inputs)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if main:
        write_json(sidecar_path(runs_dir, run_id), _meta(spec, "running", ctx.inputs))
    callback, trainer, pad = _build(ctx, ckpt_dir, ckpt, rows, on_step, pad_rank)
    with compiled(trainer.model, pad, ctx.method.lora_copies()):  # pad None: eager
        if ckpt:
            ctx.method.load_state(ckpt)
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    status = "diverged" if callback.diverged else "complete"
    if main and spec.train.save_adapter:
        save_adapter(trainer.model, ctx.method, adapter_path(runs_dir, run_id), spec)
    wall = callback.rows[-1]["wall_s"]
    if main:
        _finish(runs_dir, spec, ctx, callback.rows, status, wall, pad)
    return RunResult(run_id, status, len(callback.rows), wall)


def _build(ctx: RunContext, ckpt_dir: Path, ckpt: Path | None, rows: list[dict],
           on_step: Callable[[int], None] | None, pad_rank: int | None):
    """The probe callback, the method's Trainer, and the rank to pad to (None: eager)."""
    spec, method = ctx.spec, ctx.method
    data = ctx.probe_data  # the base model's targets: before the adapter exists
    probers = _make_probers(spec, ctx.model, ctx.tokenizer, ctx.model_key)
    model = method.build_model(ctx.model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    pad = None
    if wants_compile(spec.train.compile, ctx.device.type):
        saved = ckpt / "compile.json" if ckpt else None  # a resumed run keeps its checkpoint's padding
        pad = json.loads(saved.read_text())["pad_rank"] if saved and saved.exists() else (pad_rank or spec.lora.rank)

    def on_checkpoint(path: Path) -> None:
        method.save_state(path)
        if pad:
            (path / "compile.json").write_text(json.dumps({"pad_rank": pad}))

    wall_offset = rows[-1]["wall_s"] if rows else 0.0
    callback = ProbeCallback(model, data, spec, _base_row(spec, spec.run_id, trainable, method), rows,
                             ckpt_dir / "rows.parquet", wall_offset, on_step,
                             probe_context=method.probe_model, on_checkpoint=on_checkpoint, probers=probers)
    trainer = build_trainer(spec, method, model, ctx.data.train, ckpt_dir, [callback], ctx.device, ctx.dtype)
    callback.trainer = trainer
    _tracker_logs(trainer, ckpt_dir.parent.parent / "_logs" / spec.run_id)
    return callback, trainer, pad


def _tracker_logs(trainer: Trainer, folder: Path) -> None:
    """TensorBoard logs go to ``RUNS_DIR/_logs/<run_id>`` (not the checkpoints, deleted at the end)."""
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and cb.logging_dir is None:
            cb.logging_dir = str(folder)


def _finish(runs_dir: Path, spec: RunSpec, ctx: RunContext, rows: list[dict], status: str, wall: float,
            pad: int | None) -> None:
    """Write the result and its sidecar, then drop the checkpoints (in that order: a kill between
    the two leaves checkpoints of a complete run, which readers and the next sweep ignore)."""
    trainable = int(rows[-1]["trainable_params"])
    write_rows(runs_dir / f"{spec.run_id}.parquet", rows, row_dtypes())
    write_json(sidecar_path(runs_dir, spec.run_id),
               _meta(spec, status, ctx.inputs, trainable_params=trainable, wall_s=wall, device=str(ctx.device),
                     dtype=str(ctx.dtype), world_size=world_size(), compiled=pad is not None, pad_rank=pad))
    shutil.rmtree(runs_dir / ".checkpoints" / spec.run_id, ignore_errors=True)
