r"""Continual learning: fine-tune on an ordered sequence of tasks, evaluate every task after each.

A sequence spec is a sweep spec (``[model]``, ``[data]``, ``[train]``, ``[lora]``, ``[method]``,
``[grid]``) plus a ``[continual]`` table listing the tasks, fine-tuning corpora in order::

    [continual]
    tasks = ["lee-news", "python-docs", "python-source"]

Each grid point is one sequence. Task k trains the method's Trainer for ``train.max_steps``
steps on task k's training blocks, continuing from the adapter (and the method's state: I-LoRA's
slow adapter, replay pools) left by task k-1; each task gets a fresh optimiser, as in sequential
fine-tuning. Replaying methods (``replay``, ``distill``, ``ilora``) add each finished task's training
blocks to their replay pool, so later tasks replay earlier ones; their replay corpus may be
neither a task nor the reference corpus (unless ``method.allow_replay_overlap``), or a method
would train on task k before task k, inflating FWT and AP. After the base model (``after_task =
0``) and after each task, every task's held-out loss and the forgetting probe on
``data.reference`` are recorded.

The table (one parquet per sequence, ``OUT/<sequence_id>.parquet``, :data:`COLUMNS`), one row
per (after_task, eval_task, metric):

======================  ==========================================================================
``sequence_id``         stable hash of the sequence (its run spec and its task list)
``after_task``          0 = the base model, k = after training task k (1-based)
``after_task_name``     ``"base"`` or the k-th task's corpus
``eval_task``           a task's corpus, or the reference corpus for the probe metrics
``eval_index``          1-based index of ``eval_task`` in the sequence; 0 for the reference
``metric``              ``heldout_loss`` (tasks); ``forget_loss``, ``ref_loss``, ``agreement`` (reference)
``value``               the metric's value
``step``                update steps done in the whole sequence so far
======================  ==========================================================================

plus ``method``, ``model``, ``rank``, ``lr``, ``seed``, ``tasks`` (``"a > b > c"``), ``wall_s``
and ``cl_schema_version``. Each task's adapter (the one the probes read; I-LoRA's slow one) is
saved under ``OUT/adapters/<sequence_id>/task<k>-<corpus>/`` for :mod:`forgetting_laws.measure.landscape`.
A rerun skips finished sequences and finished tasks.

The metrics (:func:`cl_metrics`) follow Ren et al. 2024 / Chaudhry et al. 2018 with
:math:`R_{j,i}` the score on task i after training task j, T tasks and :math:`b_i` the base
model's score on task i:

.. math::

    AP = \frac1T \sum_i R_{T,i}, \quad
    BWT = \frac{1}{T-1} \sum_{i<T} (R_{T,i} - R_{i,i}), \quad
    FWT = \frac{1}{T-1} \sum_{i\ge2} (R_{i-1,i} - b_i), \quad
    F = \frac{1}{T-1} \sum_{i<T} \max_{l<T} (R_{l,i} - R_{T,i}).

Losses are scored as their negatives (higher is better), so BWT < 0 and F > 0 mean forgetting.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .spec import RunSpec, SweepSpec
from ..errors import ConfigError
from ..store import read_json, write_json, write_table

__all__ = ["cl_metrics", "ContinualSpec", "TaskSequence", "load_continual_spec", "run_sequence",
           "run_continual", "load_continual", "cl_matrix", "cl_summary", "format_matrix", "adapter_dir", "COLUMNS", "SIGN_NOTE",
           "CL_SCHEMA_VERSION"]

CL_SCHEMA_VERSION = 1
COLUMNS = ["sequence_id", "sequence", "method", "model", "rank", "lr", "seed", "tasks", "after_task",
           "after_task_name", "eval_task", "eval_index", "metric", "value", "step", "wall_s",
           "cl_schema_version"]
TASK_METRIC = "heldout_loss"
#: Printed with every metrics table of losses.
SIGN_NOTE = ("sign convention: scores are negated losses (higher is better), so AP = -mean final loss, "
             "BWT < 0 and Forgetting > 0 mean forgetting, FWT > 0 means earlier tasks lowered a "
             "task's loss below the base model's")


# --------------------------------------------------------------------------- metrics (pure numpy)


def cl_metrics(matrix: Sequence[Sequence[float]], base: Sequence[float] | None = None,
               higher_is_better: bool = True) -> dict[str, float | None]:
    r"""Continual-learning metrics of a task x task score matrix.

    Parameters
    ----------
    matrix
        (T, T): ``matrix[j][i]`` is the score on task i after training task j (0-based here;
        the formulas in the module docstring are 1-based).
    base
        (T,): the base model's score on each task; needed for FWT only.
    higher_is_better
        False for losses: the metrics are computed on the negated matrix (and base), so for
        every metric the sign means the same thing (BWT < 0: forgetting).

    Returns
    -------
    dict
        ``AP`` (mean of the last row), ``BWT`` (mean over i < T of R[T,i] - R[i,i]), ``FWT``
        (mean over i >= 2 of R[i-1,i] - b_i; None without ``base``) and ``Forgetting`` (mean over
        i < T of max over l < T of R[l,i] - R[T,i], the variant of Ren et al. / Chaudhry et al.
        2018 where l runs over every earlier row, also those before task i was trained).

    Example
    -------
    >>> cl_metrics([[1.0, 0.0], [0.5, 1.0]], base=[0.0, 0.2])
    {'AP': 0.75, 'BWT': -0.5, 'FWT': -0.2, 'Forgetting': 0.5}
    """
    R = np.asarray(matrix, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 2:
        raise ValueError(f"matrix has shape {R.shape}; expected (T, T) with T >= 2 tasks")
    b = None if base is None else np.asarray(base, dtype=float)
    if b is not None and b.shape != (R.shape[0],):
        raise ValueError(f"base has shape {b.shape}; expected ({R.shape[0]},), one score per task")
    if not higher_is_better:
        R, b = -R, (None if b is None else -b)
    T = R.shape[0]
    last = R[-1]
    out: dict[str, float | None] = {
        "AP": float(last.mean()),
        "BWT": float(np.mean([last[i] - R[i, i] for i in range(T - 1)])),
        "FWT": None if b is None else float(np.mean([R[i - 1, i] - b[i] for i in range(1, T)])),
        "Forgetting": float(np.mean([R[: T - 1, i].max() - last[i] for i in range(T - 1)])),
    }
    return out


# --------------------------------------------------------------------------- specs


@dataclass
class TaskSequence:
    """One sequence: a resolved run (its ``data.dataset`` is the first task) and the task list."""

    spec: RunSpec
    tasks: tuple[str, ...]

    def task_spec(self, k: int) -> RunSpec:
        """The run spec of task ``k`` (0-based): ``spec`` with ``data.dataset = tasks[k]``."""
        spec = copy.deepcopy(self.spec)
        spec.data = dataclasses.replace(spec.data, dataset=self.tasks[k])
        return spec

    @property
    def sequence_id(self) -> str:
        """``<method>-r<rank>-<hash>``: stable in the run spec (as :attr:`RunSpec.run_id`) and the tasks."""
        blob = f"{self.spec.run_id}|{'|'.join(self.tasks)}".encode()
        return f"{self.spec.method.name}-r{self.spec.lora.rank}-{hashlib.sha1(blob).hexdigest()[:12]}"


@dataclass
class ContinualSpec:
    """A sweep spec whose ``data.dataset`` is replaced by an ordered list of tasks.

    ``[grid]`` varies anything but the fine-tuning corpus (``method.name``, ``lora.rank``,
    ``train.seed``, ...): each grid point is one :class:`TaskSequence`.
    """

    sweep: SweepSpec
    tasks: tuple[str, ...]

    @classmethod
    def from_dict(cls, raw: dict) -> "ContinualSpec":
        raw = copy.deepcopy(raw)
        table = raw.pop("continual", None)
        if not isinstance(table, dict) or "tasks" not in table:
            raise ConfigError('a continual spec needs a [continual] table with tasks = ["corpus", ...], '
                              'e.g. tasks = ["lee-news", "python-docs", "python-source"]')
        unknown = sorted(set(table) - {"tasks"})
        if unknown:
            raise ConfigError(f"unknown field continual.{unknown[0]}; fields of [continual]: tasks")
        tasks = table["tasks"]
        if (not isinstance(tasks, list) or len(tasks) < 2 or not all(isinstance(t, str) and t for t in tasks)
                or len(set(tasks)) != len(tasks)):
            raise ConfigError(f"continual.tasks = {tasks!r}; list two or more distinct corpus names")
        if "dataset" in (raw.get("data") or {}) or "data.dataset" in (raw.get("grid") or {}):
            raise ConfigError("data.dataset is set in a continual spec; the fine-tuning corpora are "
                              "continual.tasks: remove data.dataset (and any grid over it)")
        raw.setdefault("data", {})["dataset"] = tasks[0]
        spec = cls(SweepSpec.from_dict(raw), tuple(tasks))
        for seq in spec.sequences():
            _check_sequence(seq)
        return spec

    def sequences(self) -> list[TaskSequence]:
        """One :class:`TaskSequence` per grid point, in grid order."""
        return [TaskSequence(run, self.tasks) for run in self.sweep.expand()]


def _check_sequence(seq: TaskSequence) -> None:
    d = seq.spec.data
    if d.reference in seq.tasks and d.reference_blocks != d.heldout_blocks:
        raise ConfigError(
            f"data.reference = {d.reference!r} is also a task: set data.reference_blocks = data.heldout_blocks "
            f"(now {d.reference_blocks} and {d.heldout_blocks}) so the probe blocks are exactly that task's "
            "held-out blocks, which no task trains on")
    if hasattr(seq.spec.method.config, "replay"):  # a replaying method: its corpus is none of the tasks
        from .methods.replay import check_replay_corpus

        tasks = {t: f"task {k} of the sequence (continual.tasks); finished tasks are replayed from their own "
                    "training blocks anyway" for k, t in enumerate(seq.tasks, start=1)}
        check_replay_corpus(seq.spec, {**tasks, d.reference: "data.reference, the corpus the forgetting probes read"})


def load_continual_spec(path: str | Path, overrides: list[str] = ()) -> ContinualSpec:
    """Read and validate a TOML continual spec (a file or a built-in name), with ``--set`` overrides."""
    from .spec import override, parse_spec, spec_path

    path = spec_path(path)
    raw = parse_spec(path.read_text(encoding="utf-8"), str(path))
    return ContinualSpec.from_dict(override(raw, list(overrides)))


# --------------------------------------------------------------------------- running


class _Session:
    """What one sequence run holds: model, method, every task's blocks, the probe data."""

    def __init__(self, seq: TaskSequence):
        from .setup import load_data, prepare_run

        self.seq = seq
        ctx = prepare_run(seq.task_spec(0))  # the model, the method and its data, task 1's blocks
        self.device, self.dtype, self.method = ctx.device, ctx.dtype, ctx.method
        # (train (N, T), held-out (H, T), reference (R, T)) per task
        self.data = [ctx.data] + [load_data(seq.task_spec(k), ctx.tokenizer, ctx.model_key)[0]
                                  for k in range(1, len(seq.tasks))]
        self.probe = ctx.probe_data
        self.model = self.method.build_model(ctx.model)

    def evaluate(self) -> list[dict]:
        """Rows (eval_task, eval_index, metric, value) of the model the method's probes read."""
        import torch

        from .precision import probing
        from .probes import forget_probe, lm_loss

        spec, model = self.seq.spec, self.model
        bs = spec.probe.batch_size
        rows = []
        was_training = model.training
        model.eval()
        try:
            with self.method.probe_model(model) as probed, probing(probed, spec.probe.precision):
                for i, (name, data) in enumerate(zip(self.seq.tasks, self.data), start=1):
                    rows.append({"eval_task": name, "eval_index": i, "metric": TASK_METRIC,
                                 "value": lm_loss(probed, torch.from_numpy(data.heldout), bs)})
                ref = forget_probe(probed, self.probe, bs, kl=False)
                for metric in ("forget_loss", "ref_loss", "agreement"):
                    rows.append({"eval_task": spec.data.reference, "eval_index": 0, "metric": metric,
                                 "value": ref[metric]})
        finally:
            model.train(was_training)
        return rows

    def train_task(self, k: int, work: Path, on_step=None) -> None:
        from transformers import TrainerCallback

        from .train import build_trainer

        class _Progress(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if on_step:
                    on_step(state.global_step)

        spec = self.seq.task_spec(k)
        trainer = build_trainer(spec, self.method, self.model, self.data[k].train, work, [_Progress()],
                                self.device, self.dtype)
        trainer.train()
        self.method.end_task(self.data[k].train)


def _row_base(seq: TaskSequence) -> dict:
    s = seq.spec
    return {"sequence_id": seq.sequence_id, "sequence": s.sweep.name, "method": s.method.name,
            "model": s.model.name, "rank": s.lora.rank, "lr": s.train.lr, "seed": s.train.seed,
            "tasks": " > ".join(seq.tasks), "cl_schema_version": CL_SCHEMA_VERSION}


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    return frame[COLUMNS]


def _write_frame(path: Path, rows: list[dict]) -> None:
    write_table(path, _frame(rows))


def _save_resume(session: _Session, folder: Path, done: int) -> None:
    """Trainable tensors and the method's state after ``done`` tasks (rerun starts from here)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    trained = {n: p.detach().cpu().contiguous() for n, p in session.model.named_parameters() if p.requires_grad}
    save_file(trained, folder / "trainable.safetensors")
    session.method.save_state(folder)
    write_json(folder / "done.json", {"tasks_done": done})


def _load_resume(session: _Session, folder: Path) -> int:
    """Restore what :func:`_save_resume` wrote; the number of tasks done (0 if nothing saved)."""
    import torch
    from safetensors.torch import load_file

    done = (read_json(folder / "done.json") or {}).get("tasks_done", 0)
    if not done:
        return 0
    for k in range(done):  # the method's pools grow task by task, as in the first run
        session.method.end_task(session.data[k].train)
    trained = load_file(folder / "trainable.safetensors")
    params = dict(session.model.named_parameters())
    with torch.no_grad():
        for n, t in trained.items():
            params[n].copy_(t)
    session.method.load_state(folder)
    return done


def adapter_dir(out: Path, seq: TaskSequence, k: int) -> Path:
    """Where the adapter after task ``k`` (1-based) of ``seq`` is saved."""
    name = Path(seq.tasks[k - 1]).stem.replace(":", "_")
    return Path(out) / "adapters" / seq.sequence_id / f"task{k}-{name}"


def run_sequence(seq: TaskSequence, out: str | Path, progress: bool = True) -> dict:
    """Run (or resume) one task sequence; write ``OUT/<sequence_id>.parquet`` and ``.json``.

    Returns the sequence's JSON record (status, metrics, paths of the saved adapters).
    """
    from tqdm.auto import tqdm

    from .compiling import compiled, wants_compile
    from .train import save_adapter

    out = Path(out)
    sid = seq.sequence_id
    meta = read_json(out / f"{sid}.json")
    if meta and meta.get("status") == "complete" and (out / f"{sid}.parquet").exists():
        return meta
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{sid}.json", {"sequence_id": sid, "status": "running", "tasks": list(seq.tasks),
                                     "spec": seq.spec.to_dict()})
    session = _Session(seq)
    resume = out / ".resume" / sid
    done = _load_resume(session, resume)
    rows = pd.read_parquet(out / f".{sid}.rows.parquet").to_dict("records") if done else []
    t0 = time.perf_counter() - (rows[-1]["wall_s"] if rows else 0.0)
    steps = seq.spec.train.max_steps

    def record(after: int) -> None:
        base = {**_row_base(seq), "after_task": after, "step": after * steps,
                "after_task_name": "base" if after == 0 else seq.tasks[after - 1]}
        wall = time.perf_counter() - t0
        rows.extend({**base, **r, "wall_s": wall} for r in session.evaluate())
        _write_frame(out / f".{sid}.rows.parquet", rows)

    if not rows:
        record(0)
    compile_rank = seq.spec.lora.rank if wants_compile(seq.spec.train.compile, session.device.type) else None
    with tqdm(total=len(seq.tasks) * steps, initial=done * steps, desc=sid, disable=not progress) as bar, \
         compiled(session.model, compile_rank, session.method.lora_copies()):
        for k in range(done, len(seq.tasks)):
            bar.set_postfix_str(f"task {k + 1}/{len(seq.tasks)}: {seq.tasks[k]}")
            session.train_task(k, out / ".work" / sid, on_step=lambda s, k=k: bar.update(k * steps + s - bar.n))
            record(k + 1)
            save_adapter(session.model, session.method, adapter_dir(out, seq, k + 1), seq.task_spec(k))
            _save_resume(session, resume, k + 1)
    _write_frame(out / f"{sid}.parquet", rows)
    meta = _final_meta(seq, out, _frame(rows))
    write_json(out / f"{sid}.json", meta)
    for leftover in (out / ".work" / sid, resume):
        shutil.rmtree(leftover, ignore_errors=True)
    (out / f".{sid}.rows.parquet").unlink(missing_ok=True)
    return meta


def _final_meta(seq: TaskSequence, out: Path, frame: pd.DataFrame) -> dict:
    R, base, _ = cl_matrix(frame, seq.sequence_id)
    return {"sequence_id": seq.sequence_id, "status": "complete", "tasks": list(seq.tasks),
            "spec": seq.spec.to_dict(), "metrics": cl_metrics(R, base, higher_is_better=False),
            "sign_convention": SIGN_NOTE,
            "adapters": [str(adapter_dir(out, seq, k)) for k in range(1, len(seq.tasks) + 1)]}


def run_continual(spec: ContinualSpec, out: str | Path, progress: bool = True) -> list[dict]:
    """Run every sequence of ``spec`` into ``out`` (finished ones are skipped)."""
    return [run_sequence(seq, out, progress) for seq in spec.sequences()]


# --------------------------------------------------------------------------- reading results


def load_continual(path: str | Path) -> pd.DataFrame:
    """Every finished sequence under ``path`` (an OUT folder or one parquet file), one DataFrame."""
    path = Path(path)
    files = [path] if path.is_file() else (
        sorted(p for p in path.glob("*.parquet") if not p.name.startswith(".")) if path.is_dir() else [])
    if not files:
        raise FileNotFoundError(f"no continual results at {str(path)!r}; run "
                                f"`forgetting-laws continual SPEC --out {path}` first")
    frames = [pd.read_parquet(f) for f in files]
    for f, frame in zip(files, frames):
        if "cl_schema_version" not in frame or set(frame["cl_schema_version"]) != {CL_SCHEMA_VERSION}:
            from ..store import SchemaError

            raise SchemaError(f"{f}: not a continual-learning table of version {CL_SCHEMA_VERSION}")
    return pd.concat(frames, ignore_index=True)


def cl_matrix(df: pd.DataFrame, sequence_id: str | None = None,
              metric: str = TASK_METRIC) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(R (T, T), base (T,), task names) of one sequence: R[j, i] = ``metric`` on task i after task j+1.

    ``sequence_id`` may be omitted when ``df`` holds one sequence.
    """
    ids = df["sequence_id"].unique()
    if sequence_id is None:
        if len(ids) != 1:
            raise ValueError(f"df holds {len(ids)} sequences; pass sequence_id, one of {sorted(ids)}")
        sequence_id = ids[0]
    g = df[(df.sequence_id == sequence_id) & (df.metric == metric) & (df.eval_index > 0)]
    table = g.pivot_table(index="after_task", columns="eval_index", values="value", aggfunc="first")
    tasks = g.drop_duplicates("eval_index").sort_values("eval_index")["eval_task"].tolist()
    T = len(tasks)
    R = table.reindex(index=range(1, T + 1), columns=range(1, T + 1)).to_numpy(float)
    base = table.reindex(index=[0], columns=range(1, T + 1)).to_numpy(float)[0]
    return R, base, tasks


def cl_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finished sequence: method, rank, seed, AP, BWT, FWT, Forgetting (of the held-out
    losses, negated as :data:`SIGN_NOTE` says) and the forgetting probe's final rise ``dL_f``."""
    out = []
    for sid, g in df.groupby("sequence_id", sort=True):
        R, base, _ = cl_matrix(g, sid)
        if np.isnan(R).any():
            continue  # unfinished
        f = g[g.metric == "forget_loss"].sort_values("after_task")["value"].to_numpy()
        first = g.iloc[0]
        out.append({"sequence_id": sid, "method": first.method, "rank": int(first["rank"]),
                    "seed": int(first.seed), **cl_metrics(R, base, higher_is_better=False),
                    "dL_f": float(f[-1] - f[0])})
    return pd.DataFrame(out)


def format_matrix(R: np.ndarray, base: np.ndarray, tasks: list[str]) -> str:
    """The loss matrix as text: one row per 'after task', one column per evaluated task."""
    width = max(12, *(len(t) for t in tasks))
    corner = "after / on"
    head = f"{corner:<{width}} " + " ".join(f"{t:>{width}}" for t in tasks)
    lines = [head, f"{'base':<{width}} " + " ".join(f"{v:>{width}.4f}" for v in base)]
    lines += [f"{t:<{width}} " + " ".join(f"{v:>{width}.4f}" for v in row) for t, row in zip(tasks, R)]
    return "\n".join(lines)

