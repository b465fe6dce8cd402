"""Sweeps: expand a spec into runs, run them with an executor, skip finished ones, resume.

Executors register by name (``local`` runs in-process, one run at a time; ``ray`` runs each
run as a Ray task, see :mod:`forgetting_laws.measure.ray_executor`). Each run holds a file lock while it
runs, so two sweeps sharing a RUNS_DIR never write the same run twice.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from .config import RunSpec, SweepSpec
from .distributed import is_main_process
from ..registry import Registry
from ..store import COMPLETE, RunLocked, run_lock, run_status

__all__ = ["run_sweep", "register_executor", "executor_names", "plan", "estimate", "PlannedRun"]

_EXECUTORS: Registry[Callable] = Registry("executor")

#: Register ``executor(runs, runs_dir, progress, **options) -> list[dict]`` (one dict per run:
#: run_id, status, ...): ``@register_executor("name")``. ``options`` come from the command line.
register_executor = _EXECUTORS.register


def executor_names() -> list[str]:
    return _EXECUTORS.names()


@dataclass
class PlannedRun:
    spec: RunSpec
    status: str | None  # status found in RUNS_DIR, None if never started

    @property
    def todo(self) -> bool:
        return self.status not in COMPLETE


def plan(spec: SweepSpec, runs_dir: Path) -> list[PlannedRun]:
    """The sweep's runs with what RUNS_DIR already holds for each."""
    return [PlannedRun(r, run_status(runs_dir, r.run_id)) for r in spec.expand()]


def run_locked(run: RunSpec, runs_dir: Path, on_step: Callable[[int], None] | None = None,
               compile_plan=None) -> dict:
    """Run (or resume) one run under its lock; a run another process holds is left to it.

    Under a multi-GPU launcher only rank 0 takes the lock: the other ranks are part of its run.
    Returns the outcome dict every executor returns (run_id, status, rows, wall_s).
    """
    from .train import run_one  # torch is imported only when a run starts

    lock = run_lock(runs_dir, run.run_id) if is_main_process() else contextlib.nullcontext()
    try:
        with lock:
            result = run_one(run, runs_dir, on_step=on_step, compile_plan=compile_plan)
    except RunLocked as exc:
        tqdm.write(f"skipping: {exc}")
        return {"run_id": run.run_id, "status": "locked"}
    return {"run_id": result.run_id, "status": result.status, "rows": result.rows, "wall_s": result.wall_s}


def _run_with_bar(run: RunSpec, runs_dir: Path, steps_bar, compile_plan=None) -> dict:
    steps_bar.reset(total=run.train.max_steps)
    steps_bar.set_description(f"{run.run_id}")
    last = [0]

    def on_step(step: int) -> None:
        steps_bar.update(step - last[0])
        last[0] = step

    return run_locked(run, runs_dir, on_step, compile_plan)


@register_executor("local")
def _local(runs: list[RunSpec], runs_dir: Path, progress: bool = True) -> list[dict]:
    """Run each run in this process, one after another, with run and step progress bars.

    Runs that share a compiled graph are planned together (:func:`compiling.plan_compile`), so a
    sweep compiles once and ``compile = "auto"`` weighs the cost against all their steps. The
    plan is made again before each run with what the runs before it measured.
    """
    from .compiling import plan_compile

    todo = [run for run in runs if run_status(runs_dir, run.run_id) not in COMPLETE]
    outcomes, said = [], set()
    with tqdm(total=len(runs), desc="runs", position=0, disable=not progress) as runs_bar, \
         tqdm(total=1, desc="steps", position=1, leave=False, disable=not progress) as steps_bar:
        for run in runs:
            plan = plan_compile([run] + [r for r in todo if r.run_id != run.run_id])[run.run_id]
            todo = [r for r in todo if r.run_id != run.run_id]
            if plan.reason not in said | {"compile = false"}:
                tqdm.write(f"compilation: {plan.reason}")
                said.add(plan.reason)
            outcome = _run_with_bar(run, runs_dir, steps_bar, plan)
            if outcome["status"] == "diverged":
                tqdm.write(f"run {run.run_id} diverged (non-finite loss); its rows so far are kept")
            outcomes.append(outcome)
            runs_bar.update(1)
    return outcomes


def preflight(runs: list[RunSpec]) -> None:
    """Check every run's model and corpora before any run starts (raises :class:`ConfigError`).

    Loads each distinct model once and tokenises its corpora (and each method's extra data,
    such as a replay corpus) into the block cache, so the checks that need a tokenizer (is the
    corpus large enough?) cost the runs nothing later.
    """
    import torch

    from .methods import make_method
    from .models import load_model, model_fingerprint
    from .train import prepare_data

    by_model: dict[str, list[RunSpec]] = {}
    for run in runs:
        by_model.setdefault(run.model.name, []).append(run)
    for name, group in by_model.items():
        # the dtype the spec names, so the cache keys (model fingerprints) are the ones the runs
        # compute on their GPUs, and a bfloat16 7B model takes half the driver's memory
        dtype = {"bfloat16": torch.bfloat16}.get(group[0].model.dtype, torch.float32)
        model, tok = load_model(name, dtype, group[0].model.attention)
        key = model_fingerprint(model)
        seen = set()
        for run in group:
            d = run.data
            sig = (d.dataset, d.reference, d.seq_len, d.heldout_blocks, d.reference_blocks,
                   d.split_seed, run.train.batch_size * run.train.grad_accum)
            if sig not in seen:
                seen.add(sig)
                prepare_data(run, tok, key)
            if run.probe.lm_eval is not None or run.probe.refusal is not None:
                from .evals import check_probes

                check_probes(run)  # unknown task names, missing prompt files
            method_sig = (sig, run.method.name, tuple(sorted(run.method.resolved().items())))
            if method_sig not in seen:
                seen.add(method_sig)
                make_method(run).prepare_data(tok, key)
        del model


def run_sweep(spec: SweepSpec, runs_dir: str | Path, executor: str = "local",
              progress: bool = True, **options) -> list[dict]:
    """Run every run of ``spec`` not already complete in ``runs_dir``; resume interrupted ones.

    Runs marked failed are tried again. ``options`` go to the executor (``ray``: ``address``,
    ``ray_cpus``). Returns one dict per run started (run_id, status, rows, wall_s; failed runs:
    error).
    """
    if executor not in _EXECUTORS:
        raise ValueError(f"executor = {executor!r}; registered executors: {', '.join(executor_names())}")
    runs_dir = Path(runs_dir)
    todo = [p.spec for p in plan(spec, runs_dir) if p.todo]
    if todo:
        preflight(todo)
        runs_dir.mkdir(parents=True, exist_ok=True)
    return _EXECUTORS[executor](todo, runs_dir, progress, **options)


# --------------------------------------------------------------------------- cost estimate


def _time_steps(run: RunSpec, model, n: int = 2) -> float:
    """Seconds per optimiser step of ``run``'s LoRA on ``model`` (a fresh copy), after a warm-up."""
    import copy

    import torch

    from .methods.lora import lora_model
    from .train import resolve_device

    device, _ = resolve_device(run)
    peft_model = lora_model(copy.deepcopy(model), run).to(device)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=run.train.lr)
    ids = torch.randint(0, model.config.vocab_size, (run.train.batch_size, run.data.seq_len), device=device)
    times = []
    for _ in range(n + 1):
        t0 = time.perf_counter()
        peft_model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return min(times[1:]) * run.train.grad_accum


def estimate(spec: SweepSpec) -> dict[str, float]:
    """Estimate each run's seconds from a short calibration of its smallest and largest rank.

    Step time is interpolated linearly in the rank between the two measured ranks and scaled by
    the method's ``step_cost`` (SAM: 2); a probe is timed as forward passes over the reference
    and held-out blocks.
    """
    import torch

    from .methods import get_method
    from .models import load_model
    from .train import resolve_device

    runs = spec.expand()
    t0 = time.perf_counter()
    device, dtype = resolve_device(runs[0])
    model, _ = load_model(runs[0].model.name, dtype)
    load_s = time.perf_counter() - t0
    by_rank = sorted({r.lora.rank: r for r in runs}.items())
    lo, hi = by_rank[0], by_rank[-1]
    t_lo = _time_steps(lo[1], model)
    t_hi = _time_steps(hi[1], model) if hi[0] != lo[0] else t_lo
    model.to(device).eval()
    ids = torch.randint(0, model.config.vocab_size, (runs[0].probe.batch_size, runs[0].data.seq_len), device=device)
    with torch.inference_mode():
        t1 = time.perf_counter()
        model(input_ids=ids)
        fwd_s = (time.perf_counter() - t1) / runs[0].probe.batch_size  # seconds per block
    out = {"_load_s": load_s}
    for run in runs:
        frac = 0.0 if hi[0] == lo[0] else (run.lora.rank - lo[0]) / (hi[0] - lo[0])
        step_s = (t_lo + frac * (t_hi - t_lo)) * get_method(run.method.name).step_cost
        probes = len(run.probe.schedule(run.train.max_steps))
        blocks = run.data.reference_blocks * (2 if run.probe.forget_kl else 1) + run.data.heldout_blocks
        out[run.run_id] = run.train.max_steps * step_s + probes * blocks * fwd_s
    return out


from . import ray_executor  # noqa: E402,F401  registers the "ray" executor (Ray itself is imported lazily)
