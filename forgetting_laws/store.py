"""The results store: one parquet (+ JSON sidecar) per run, atomic writes, versioned schema.

``RUNS_DIR/<run_id>.parquet`` holds one row per (run, probe step) with the columns of
:data:`SCHEMA`; ``RUNS_DIR/_meta/<run_id>.json`` (the sidecar) holds the resolved spec, the content
fingerprints of what the run read (``inputs``), versions and status. Everything that is not a
result lives under a name starting with ``_`` or ``.`` (sidecars, kept adapters, checkpoints,
locks), which parquet readers skip, so the folder is one table to pandas
(``pd.read_parquet(RUNS_DIR)``), polars (``pl.read_parquet(f"{RUNS_DIR}/*.parquet")``) and duckdb
(``read_parquet('RUNS_DIR/*.parquet')``): every result file has the same columns. Every file is written
atomically (a temporary file, then a rename) and verified when read: a file that does not read
back is reported by name (:class:`CorruptFile`), and the sweep moves it aside into
``RUNS_DIR/.corrupt/`` and runs its run again. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

__all__ = ["SCHEMA", "SCHEMA_VERSION", "load_runs", "write_rows", "write_table", "sidecar_path", "adapter_path",
           "read_sidecars", "write_json", "read_json", "read_meta",
           "read_rows", "check_version", "run_status", "run_lock", "move_aside", "SchemaError", "CorruptFile", "RunLocked",
           "COMPLETE"]

SCHEMA_VERSION = 1

#: column -> pandas dtype, in DESIGN.md order. Method settings may add columns after these.
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


class CorruptFile(ValueError):
    """A file of the store that does not read back (truncated, not what its name says)."""

    def __init__(self, path: Path | str, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


class RunLocked(RuntimeError):
    """Another process is working on this run."""


def sidecar_path(runs_dir: Path, run_id: str) -> Path:
    """Where a run's sidecar lives (``RUNS_DIR/_meta/<run_id>.json``; older folders kept it beside
    the result, ``RUNS_DIR/<run_id>.json``, which is still read)."""
    path = Path(runs_dir) / "_meta" / f"{run_id}.json"
    legacy = Path(runs_dir) / f"{run_id}.json"
    return legacy if legacy.exists() and not path.exists() else path


def adapter_path(runs_dir: Path, run_id: str) -> Path:
    """Where a run keeps its final adapter (``[train] save_adapter``): ``RUNS_DIR/_adapters/<run_id>``."""
    return Path(runs_dir) / "_adapters" / run_id


def to_frame(rows: list[dict], dtypes: dict[str, str] | None = None) -> pd.DataFrame:
    """Rows (dicts) -> a DataFrame with the schema's dtypes (and ``dtypes`` for extra columns, so
    a column means one type in every file), extra columns kept after the schema's."""
    frame = pd.DataFrame(rows)
    for col, dtype in {**SCHEMA, **(dtypes or {})}.items():
        if col not in frame:
            frame[col] = np.nan if dtype == "float64" else pd.NA
        frame[col] = frame[col].astype(dtype)
    extra = [c for c in frame.columns if c not in SCHEMA]
    return frame[list(SCHEMA) + extra]


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


def write_table(path: Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as parquet, atomically."""
    _atomic(Path(path), lambda tmp: frame.to_parquet(tmp, index=False))


def write_rows(path: Path, rows: list[dict], dtypes: dict[str, str] | None = None) -> None:
    """Write a run's rows as parquet, atomically, with the schema's dtypes (and ``dtypes``)."""
    write_table(path, to_frame(rows, dtypes))


def write_json(path: Path, obj: dict) -> None:
    """Write a JSON document, atomically."""
    _atomic(Path(path), lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=str)))


def read_json(path: Path) -> dict | None:
    """A JSON document, or None if the file does not exist; :class:`CorruptFile` if it is not JSON."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFile(path, f"not a JSON document ({exc})") from None
    if not isinstance(obj, dict):
        raise CorruptFile(path, f"holds a {type(obj).__name__}, not a JSON object")
    return obj


#: A run's sidecar is its JSON file; :func:`read_meta` reads one.
read_meta = read_json


def read_rows(path: Path) -> pd.DataFrame:
    """A run's rows from its parquet file; :class:`CorruptFile` if it does not read back whole."""
    try:
        frame = pd.read_parquet(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pyarrow raises several kinds for a truncated or foreign file
        raise CorruptFile(path, f"not a readable parquet file ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if "schema_version" not in frame or "run_id" not in frame:
        raise CorruptFile(path, "not a run file of forgetting-laws (no schema_version / run_id columns)")
    return frame


def move_aside(path: Path, runs_dir: Path) -> Path:
    """Move ``path`` (a file or folder of RUNS_DIR) into ``RUNS_DIR/.corrupt/`` with a time stamp."""
    target = Path(runs_dir) / ".corrupt" / f"{Path(path).name}.{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(target))
    return target


def read_sidecars(runs_dir: Path) -> dict[str, dict]:
    """run_id -> sidecar of every run in ``runs_dir`` (``_meta/*.json``, and the older ``*.json``);
    a sidecar that does not read back is skipped with a warning naming it."""
    runs_dir = Path(runs_dir)
    out = {}
    for path in sorted([*runs_dir.glob("_meta/*.json"), *runs_dir.glob("*.json")]):
        try:
            meta = read_meta(path)
        except CorruptFile as exc:
            warnings.warn(f"skipped {exc}", stacklevel=2)
            continue
        if meta and "run_id" in meta:
            out.setdefault(meta["run_id"], meta)
    return out


def run_status(runs_dir: Path, run_id: str, repair: bool = False) -> str | None:
    """'complete', 'diverged', 'running', 'failed' or None (never started, or nothing usable left).

    A complete run's result file is read back. With ``repair``, a sidecar or result file that
    does not read back is moved aside (named in a warning) and the run counts as not started;
    without it such a file raises :class:`CorruptFile`.
    """
    runs_dir = Path(runs_dir)
    sidecar, result = sidecar_path(runs_dir, run_id), runs_dir / f"{run_id}.parquet"
    try:
        meta = read_meta(sidecar)
        status = meta.get("status") if meta else None
        if status in COMPLETE:
            if not result.exists():
                return None
            check_version(read_rows(result), result)
    except (CorruptFile, SchemaError) as exc:
        if not repair:
            raise
        for path in (sidecar, result):
            if path.exists():
                moved = move_aside(path, runs_dir)
                warnings.warn(f"{exc}; moved {path.name} to {moved}, and run {run_id} will be run again",
                              stacklevel=2)
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


def check_version(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``frame`` if its ``schema_version`` is the one this version reads; else a :class:`SchemaError`."""
    versions = set(frame["schema_version"].unique())
    if versions != {SCHEMA_VERSION}:
        raise SchemaError(f"{path}: schema_version {sorted(map(int, versions))} is not supported by this version "
                          f"of forgetting-laws (which reads {SCHEMA_VERSION}); read it with a forgetting-laws "
                          f"that writes that version (pip install -U forgetting-laws)")
    return frame


def _run_files(path: Path, include_partial: bool) -> list[Path]:
    files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
    if include_partial:  # checkpoints of runs not yet complete (a finished run's are left-overs)
        done = {p.stem for p in files}
        files += sorted(p for p in path.glob(".checkpoints/*/rows.parquet") if p.parent.name not in done)
    return files


def load_runs(path: str | Path, include_partial: bool = False) -> pd.DataFrame:
    """All runs under ``path`` (a RUNS_DIR or one parquet file) as one DataFrame.

    Each row is one (run, probe step); see :data:`SCHEMA`. Runs still in progress are left out
    unless ``include_partial``. In a folder, a file that does not read back, or that is not a
    run file, is skipped with a warning naming it (``forgetting-laws sweep`` moves such files
    aside and runs their runs again); a file of another schema version is an error.

    Example
    -------
    >>> df = load_runs("runs/demo")                             # doctest: +SKIP
    >>> df.groupby("rank").forget_loss.max()                    # doctest: +SKIP
    """
    path = Path(path)
    if path.is_file():
        return check_version(read_rows(path), path).sort_values(["run_id", "step"], ignore_index=True)
    if not path.is_dir():
        raise FileNotFoundError(f"no runs at {str(path)!r}: expected a RUNS_DIR or a .parquet file")
    frames = []
    for f in _run_files(path, include_partial):
        try:
            frames.append(check_version(read_rows(f), f))
        except CorruptFile as exc:
            warnings.warn(f"skipped {exc}", stacklevel=2)
    if not frames:
        raise FileNotFoundError(f"no readable run parquet files in {str(path)!r}; run "
                                f"`forgetting-laws sweep SPEC --out {path}` first")
    return pd.concat(frames, ignore_index=True).sort_values(["run_id", "step"], ignore_index=True)
