"""Sweeps: expand a spec into runs, check them all, run the ones not done, resume interrupted ones.

Before any run starts, :func:`preflight` loads each model once, tokenises every corpus and
fingerprints their content; a complete run whose recorded inputs differ from what it would read
now (an edited corpus, another model revision) is *stale*: the sweep refuses to reuse it, or with
``rerun_stale`` moves its files aside and runs it again. Runs are carried out by an executor
(:mod:`.executors`), each under its own lock.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..store import COMPLETE, move_aside, read_meta, run_status, sidecar_path
from .compiling import pad_ranks
from .executors import EXECUTORS, executor_names
from .spec import RunSpec, SweepSpec

__all__ = ["run_sweep", "plan", "preflight", "PlannedRun", "StaleRuns"]


class StaleRuns(ConfigError):
    """Complete runs whose inputs changed since they were recorded."""


@dataclass
class PlannedRun:
    spec: RunSpec
    status: str | None  # status found in RUNS_DIR, None if never started

    @property
    def todo(self) -> bool:
        return self.status not in COMPLETE


def plan(spec: SweepSpec, runs_dir: Path, repair: bool = False) -> list[PlannedRun]:
    """The sweep's runs with what RUNS_DIR already holds for each (files are read back; with
    ``repair`` an unreadable one is moved aside and its run counts as not started)."""
    return [PlannedRun(r, run_status(runs_dir, r.run_id, repair=repair)) for r in spec.expand()]


def preflight(runs: list[RunSpec]) -> dict[str, dict[str, str]]:
    """Check every run's model, corpora and probes before any run starts; return each run's inputs.

    Loads each distinct model once and tokenises its corpora (and each method's extra data,
    such as a replay corpus) into the block cache, so the checks that need a tokenizer (is the
    corpus large enough? do the LoRA targets exist?) cost the runs nothing later. Returns
    run_id -> content fingerprints of what the run reads. Raises :class:`ConfigError`.
    """
    from .setup import check_model, check_trackers, load_base, read_inputs, resolve_device

    inputs: dict[str, dict[str, str]] = {}
    by_model: dict[tuple, list[RunSpec]] = {}
    for run in runs:
        by_model.setdefault((run.model.name, resolve_device(run)[1], run.model.attention), []).append(run)
    for (_, dtype, _), group in by_model.items():
        model, tok, key = load_base(group[0], dtype)
        for run in group:
            if run is not group[0]:
                check_model(run, model)
                check_trackers(run)
            if run.probe.lm_eval is not None or run.probe.refusal is not None:
                from .evals import check_probes

                check_probes(run)  # unknown task names, missing prompt files, task code
            inputs[run.run_id] = read_inputs(run, tok, key)[2]
        del model
    return inputs


def _stale(runs: list[RunSpec], runs_dir: Path, statuses: dict, inputs: dict) -> list[tuple[RunSpec, list[str]]]:
    """Complete runs whose recorded inputs differ from the current ones, with what changed."""
    out, unrecorded = [], 0
    for run in runs:
        if statuses[run.run_id] not in COMPLETE:
            continue
        recorded = (read_meta(sidecar_path(runs_dir, run.run_id)) or {}).get("inputs")
        if recorded is None:
            unrecorded += 1
        elif recorded != inputs[run.run_id]:
            changed = sorted(k for k in {*recorded, *inputs[run.run_id]}
                             if recorded.get(k) != inputs[run.run_id].get(k))
            out.append((run, changed))
    if unrecorded:
        warnings.warn(f"{unrecorded} complete run(s) in {runs_dir} were recorded without input fingerprints "
                      "(an older version): they are reused as they are", stacklevel=3)
    return out


def _set_aside_stale(stale: list, runs_dir: Path, rerun: bool) -> None:
    if not stale:
        return
    lines = [f"  {run.run_id}: {', '.join(changed)} changed" for run, changed in stale]
    if not rerun:
        raise StaleRuns(f"{len(stale)} complete run(s) in {runs_dir} were computed from other inputs than the "
                        "spec now reads:\n" + "\n".join(lines) + "\nrerun them with --rerun-stale (their files "
                        "are moved to RUNS_DIR/.corrupt/), or write to a new folder with --out")
    for run, _ in stale:
        for path in (sidecar_path(runs_dir, run.run_id), Path(runs_dir) / f"{run.run_id}.parquet"):
            if path.exists():
                move_aside(path, runs_dir)


def _drop_leftover_checkpoints(runs_dir: Path, done: set[str]) -> None:
    """Checkpoints of complete runs (a kill between the result and the clean-up) are deleted."""
    for ckpt in (Path(runs_dir) / ".checkpoints").glob("*"):
        if ckpt.name in done:
            shutil.rmtree(ckpt, ignore_errors=True)


def run_sweep(spec: SweepSpec, runs_dir: str | Path, executor: str = "local", progress: bool = True,
              rerun_stale: bool = False, **options) -> list[dict]:
    """Run every run of ``spec`` not already complete in ``runs_dir``; resume interrupted ones.

    Runs marked failed are tried again; a complete run whose inputs changed is refused
    (:class:`StaleRuns`) unless ``rerun_stale``. ``options`` go to the executor (``ray``:
    ``address``, ``ray_cpus``). Returns one dict per run started (run_id, status, rows, wall_s;
    failed runs: error).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor = {executor!r}; registered executors: {', '.join(executor_names())}")
    runs_dir = Path(runs_dir)
    runs = spec.expand()
    inputs = preflight(runs)  # before anything on disk changes
    statuses = {p.spec.run_id: p.status for p in plan(spec, runs_dir, repair=True)}
    stale = _stale(runs, runs_dir, statuses, inputs)
    _set_aside_stale(stale, runs_dir, rerun_stale)
    stale_ids = {run.run_id for run, _ in stale}
    todo = [r for r in runs if statuses[r.run_id] not in COMPLETE or r.run_id in stale_ids]
    _drop_leftover_checkpoints(runs_dir, {r for r, s in statuses.items() if s in COMPLETE} - stale_ids)
    if not todo:
        return []
    runs_dir.mkdir(parents=True, exist_ok=True)
    return EXECUTORS[executor](todo, runs_dir, progress, pad_ranks=pad_ranks(todo), **options)
