"""The results store: one parquet (+ JSON) per run, atomic writes, versioned schema.

``RUNS_DIR/<run_id>.parquet`` holds one row per (run, probe step) with the columns of
:data:`SCHEMA`; ``RUNS_DIR/<run_id>.json`` holds the resolved spec, versions and status.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

__all__ = ["SCHEMA", "SCHEMA_VERSION", "load_runs", "write_rows", "write_json", "read_json",
           "run_status", "run_lock", "SchemaError", "RunLocked"]

SCHEMA_VERSION = 1

#: column -> pandas dtype, in DESIGN.md order. Method knobs may add columns after these.
SCHEMA: dict[str, str] = {
    "run_id": "string", "sweep": "string", "method": "string", "model": "string",
    "dataset": "string", "reference": "string",
    "seed": "int64", "rank": "int64", "step": "int64", "tokens_seen": "int64",
    "trainable_params": "int64",
    "lr": "float64", "lora_alpha": "float64",
    "ft_loss": "float64", "ft_train_loss": "float64", "forget_loss": "float64",
    "forget_kl": "float64", "ref_loss": "float64", "agreement": "float64",
    "wall_s": "float64",
    "schema_version": "int32",
}

COMPLETE = ("complete", "diverged")  # statuses a rerun does not redo


class SchemaError(ValueError):
    """A results file this version of the toolkit cannot read."""


class RunLocked(RuntimeError):
    """Another process is working on this run."""


def to_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows (dicts) -> a DataFrame with the schema's dtypes, extra columns kept after them."""
    frame = pd.DataFrame(rows)
    for col, dtype in SCHEMA.items():
        if col not in frame:
            frame[col] = np.nan if dtype == "float64" else pd.NA
        frame[col] = frame[col].astype(dtype)
    extra = [c for c in frame.columns if c not in SCHEMA]
    return frame[list(SCHEMA) + extra]


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write rows as parquet, atomically."""
    _atomic(Path(path), lambda tmp: to_frame(rows).to_parquet(tmp, index=False))


def write_json(path: Path, obj: dict) -> None:
    """Write a JSON document, atomically."""
    _atomic(Path(path), lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=str)))


def read_json(path: Path) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def run_status(runs_dir: Path, run_id: str) -> str | None:
    """'complete', 'diverged', 'running', 'failed' or None (never started)."""
    meta = read_json(Path(runs_dir) / f"{run_id}.json")
    status = meta.get("status") if meta else None
    if status in COMPLETE and not (Path(runs_dir) / f"{run_id}.parquet").exists():
        return None
    return status


@contextmanager
def run_lock(runs_dir: Path, run_id: str) -> Iterator[None]:
    """Hold an exclusive lock on one run, or raise :class:`RunLocked` at once."""
    from filelock import FileLock, Timeout

    lock_dir = Path(runs_dir) / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_dir / f"{run_id}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunLocked(f"run {run_id} is being run by another process (lock {lock.lock_file})") from None
    try:
        yield
    finally:
        lock.release()


def _read_one(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    versions = set(frame["schema_version"].unique()) if "schema_version" in frame else {None}
    if versions != {SCHEMA_VERSION}:
        raise SchemaError(
            f"{path}: schema_version {sorted(map(str, versions))} is not supported by this version "
            f"(which reads {SCHEMA_VERSION}); upgrade forgetting-laws or rerun the sweep"
        )
    return frame


def load_runs(path: str | Path, include_partial: bool = False) -> pd.DataFrame:
    """All runs under ``path`` (a RUNS_DIR or one parquet file) as one DataFrame.

    Each row is one (run, probe step); see :data:`SCHEMA`. Runs still in progress are left out
    unless ``include_partial``.

    Example
    -------
    >>> df = load_runs("runs/demo")                             # doctest: +SKIP
    >>> df.groupby("rank").forget_loss.max()                    # doctest: +SKIP
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if include_partial:
            files += sorted(path.glob(".checkpoints/*/rows.parquet"))
    else:
        raise FileNotFoundError(f"no runs at {str(path)!r}: expected a RUNS_DIR or a .parquet file")
    if not files:
        raise FileNotFoundError(f"no run parquet files in {str(path)!r}; run `forgetting-laws sweep SPEC --out {path}` first")
    frames = [_read_one(f) for f in files]
    return pd.concat(frames, ignore_index=True).sort_values(["run_id", "step"], ignore_index=True)
