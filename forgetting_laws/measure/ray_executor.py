"""The ``ray`` executor: each run a Ray task, on a local Ray started on the fly or a cluster.

Each task reserves ``[sweep] num_cpus`` / ``num_gpus`` and runs :func:`executors.run_locked` in a
Ray worker, which writes ``RUNS_DIR/<run_id>.parquet`` and ``.json`` exactly as the local
executor does (so RUNS_DIR must be a folder every node sees). A task that raises, or whose
worker dies, is retried ``[sweep] max_retries`` times, resuming from the run's last checkpoint;
after that the run is marked ``failed`` in its JSON, with the error, and the other runs go on.
A rerun of the sweep tries failed and interrupted runs again and skips complete ones.

Ray is optional (``pip install 'forgetting-laws[ray]'``) and imported only when this executor
runs.

Example
-------
>>> run_sweep(load_spec("demo"), "runs/demo", executor="ray")       # doctest: +SKIP
>>> run_sweep(spec, "/shared/runs", executor="ray", address="ray://head:10001")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import ConfigError
from .executors import mark_failed, run_locked
from .spec import RunSpec

__all__ = ["ray_executor", "worker_env"]  # registered lazily as "ray" by .executors

#: Driver environment variables the workers get besides every ``FORGETTING_LAWS_*`` one.
PASSED_ENV = ("PYTHONPATH", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE",
              "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("executor 'ray' needs Ray: pip install 'forgetting-laws[ray]' "
                          "(or pip install 'ray[default]>=2.9')") from None
    return ray


def worker_env() -> dict[str, str]:
    """Environment variables every Ray worker runs with, taken from the driver.

    The workers share the driver's cache (``FORGETTING_LAWS_CACHE``: token blocks and base-model
    targets computed once), plugins (``FORGETTING_LAWS_PLUGINS``) and Hugging Face settings,
    and find this copy of the package when it is not installed (a source checkout on PYTHONPATH).
    """
    from ..cache import cache_dir

    env = {k: v for k, v in os.environ.items() if k.startswith("FORGETTING_LAWS_") or k in PASSED_ENV}
    env["FORGETTING_LAWS_CACHE"] = str(cache_dir().resolve())
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds the package
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if "site-packages" not in root and root not in paths:
        paths.insert(0, root)
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _run_task(run: RunSpec, runs_dir: str, num_cpus: float, pad_rank: int | None) -> dict:
    """The body of one Ray task (runs in a worker): one run under its lock."""
    import torch

    from ..registry import import_plugins

    import_plugins()
    torch.set_num_threads(max(1, int(num_cpus)))  # the CPUs Ray reserved for this run, no more
    return run_locked(run, Path(runs_dir), pad_rank=pad_rank)


def _connect(ray, address: str | None, ray_cpus: int | None) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    if address and ray_cpus is not None:
        raise ConfigError(f"ray_cpus = {ray_cpus} sizes a local Ray; it cannot be given with "
                          f"address = {address!r} (the cluster has its own resources)")
    # "local" starts a fresh instance: never join some other Ray found on this machine by chance.
    ray.init(address=address or "local", num_cpus=None if address else ray_cpus,
             include_dashboard=False, ignore_reinit_error=True, log_to_driver=True)
    return True


def _check_resources(ray, runs: list[RunSpec]) -> None:
    """Refuse runs that no node could ever schedule (they would wait forever)."""
    have = ray.cluster_resources()
    for kind, key in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        need = max(getattr(r.sweep, key) for r in runs)
        if need > have.get(kind, 0.0):
            raise ConfigError(
                f"sweep.{key} = {need:g} per run, but the Ray cluster has {have.get(kind, 0.0):g} {kind}s; "
                f"lower sweep.{key} (or --{key.replace('_', '-')}) or connect to a cluster with "
                f"--address")


def _submit(ray, runs: list[RunSpec], runs_dir: Path, pad_ranks: dict) -> dict:
    task = ray.remote(_run_task)
    env = {"env_vars": worker_env()}
    refs = {}
    for run in runs:
        s = run.sweep
        ref = task.options(num_cpus=s.num_cpus, num_gpus=s.num_gpus, max_retries=s.max_retries,
                           retry_exceptions=True, runtime_env=env, name=f"run-{run.run_id}"
                           ).remote(run, str(runs_dir), s.num_cpus, pad_ranks.get(run.run_id))
        refs[ref] = run
    return refs


def _collect(ray, refs: dict, runs_dir: Path, progress: bool) -> list[dict]:
    """Outcomes as the tasks finish (a runs bar), in the order the runs were given."""
    pending, outcomes = list(refs), {}
    with tqdm(total=len(pending), desc="runs (ray)", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            run = refs[done[0]]
            try:
                outcomes[run.run_id] = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # retries spent: the run fails, the sweep goes on
                outcomes[run.run_id] = mark_failed(run, runs_dir, exc, attempts=run.sweep.max_retries + 1)
                tqdm.write(f"run {run.run_id} failed after {run.sweep.max_retries + 1} attempts: "
                           f"{outcomes[run.run_id]['error']}")
            bar.update(1)
    return [outcomes[r.run_id] for r in refs.values()]


def ray_executor(runs: list[RunSpec], runs_dir: Path, progress: bool = True, pad_ranks: dict | None = None,
                 address: str | None = None, ray_cpus: int | None = None) -> list[dict]:
    """Run each run as a Ray task; collect the outcomes as they finish.

    Parameters
    ----------
    runs
        The runs to do (finished ones are already left out).
    runs_dir
        RUNS_DIR, seen by every worker.
    progress
        Show a runs bar.
    address
        A Ray cluster (``ray://host:10001``, ``host:6379`` or ``auto``); without it a local Ray
        is started for the sweep and shut down after it. A Ray already initialised in this
        process (``ray.init`` in a notebook) is used as it is.
    ray_cpus
        CPUs of the local Ray (default: all of this machine's).
    """
    ray = _import_ray()
    if not runs:
        return []
    started = _connect(ray, address, ray_cpus)
    try:
        _check_resources(ray, runs)
        return _collect(ray, _submit(ray, runs, Path(runs_dir), pad_ranks or {}), Path(runs_dir), progress)
    finally:
        if started:
            ray.shutdown()
