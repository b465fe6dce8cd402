"""Executors: how a sweep's runs are carried out. ``local`` runs them in this process, one at a
time; ``ray`` (:mod:`.ray_executor`, registered lazily: Ray is imported only when asked for) runs
each as a Ray task.

An executor is ``executor(runs, runs_dir, progress, pad_ranks, **options) -> list[dict]``, one
outcome dict per run (run_id, status, ...); register your own with ``@register_executor("name")``.
Every executor runs a run through :func:`run_locked`, so two sweeps sharing a RUNS_DIR never
compute the same run twice, and a run that raises is marked ``failed`` while the others go on.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from ..registry import Registry
from ..store import COMPLETE, RunLocked, read_meta, run_lock, run_status, sidecar_path, write_json
from .distributed import is_main_process

__all__ = ["EXECUTORS", "register_executor", "executor_names", "run_locked", "mark_failed"]

EXECUTORS: Registry[Callable] = Registry("executor")
register_executor = EXECUTORS.register
EXECUTORS.add_lazy("ray", "forgetting_laws.measure.ray_executor:ray_executor")


def executor_names() -> list[str]:
    return EXECUTORS.names()


def mark_failed(run, runs_dir: Path, error: BaseException, attempts: int = 1) -> dict:
    """Record a run that failed: status ``failed``, the error and its traceback, in its sidecar."""
    import traceback

    path = sidecar_path(runs_dir, run.run_id)
    try:
        meta = read_meta(path) or {}
    except ValueError:  # an unreadable sidecar: replaced by the failure record
        meta = {}
    meta.setdefault("run_id", run.run_id)
    meta.setdefault("spec", run.to_dict())
    cause = getattr(error, "cause", None) or error  # Ray wraps the task's own exception
    meta.update(status="failed", error=f"{type(cause).__name__}: {cause}".splitlines()[0],
                traceback="".join(traceback.format_exception(error)), attempts=attempts)
    write_json(path, meta)
    return {"run_id": run.run_id, "status": "failed", "error": meta["error"]}


def run_locked(run, runs_dir: Path, on_step: Callable[[int], None] | None = None,
               pad_rank: int | None = None) -> dict:
    """Run (or resume) one run under its lock; a run another process holds or has finished is left.

    The lock holder checks the run's status again once it holds the lock: another sweep may have
    completed it meanwhile. Under a multi-GPU launcher only rank 0 takes the lock: the other
    ranks are part of its run. Returns the outcome dict every executor returns (run_id, status,
    rows, wall_s).
    """
    from .train import run_one  # torch is imported only when a run starts

    lock = run_lock(runs_dir, run.run_id) if is_main_process() else contextlib.nullcontext()
    try:
        with lock:
            if run_status(runs_dir, run.run_id, repair=True) in COMPLETE:
                return {"run_id": run.run_id, "status": "done elsewhere"}
            result = run_one(run, runs_dir, on_step=on_step, pad_rank=pad_rank)
    except RunLocked as exc:
        tqdm.write(f"skipping: {exc}")
        return {"run_id": run.run_id, "status": "locked"}
    return {"run_id": result.run_id, "status": result.status, "rows": result.rows, "wall_s": result.wall_s}


@register_executor("local")
def _local(runs: list, runs_dir: Path, progress: bool = True, pad_ranks: dict | None = None) -> list[dict]:
    """Run each run in this process, one after another, with run and step progress bars.

    A run that raises is marked ``failed`` (its error in its sidecar) and the sweep goes on.
    """
    outcomes = []
    with tqdm(total=len(runs), desc="runs", position=0, disable=not progress) as runs_bar, \
         tqdm(total=1, desc="steps", position=1, leave=False, disable=not progress) as steps_bar:
        for run in runs:
            steps_bar.reset(total=run.train.max_steps)
            steps_bar.set_description(run.run_id)
            last = [0]

            def on_step(step: int) -> None:
                steps_bar.update(step - last[0])
                last[0] = step

            try:
                outcome = run_locked(run, runs_dir, on_step, (pad_ranks or {}).get(run.run_id))
            except Exception as exc:  # one run's failure must not lose the others
                outcome = mark_failed(run, runs_dir, exc)
                tqdm.write(f"run {run.run_id} failed: {outcome['error']} (traceback in _meta/{run.run_id}.json)")
            if outcome["status"] == "diverged":
                tqdm.write(f"run {run.run_id} diverged (non-finite loss); its rows so far are kept")
            outcomes.append(outcome)
            runs_bar.update(1)
    return outcomes
