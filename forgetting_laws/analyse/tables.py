"""Tables to analyse: a runs folder, a CSV or parquet file, or a DataFrame, in the schema's names.

A table of one's own is read as it is, then its columns are renamed to the schema's
(:data:`~forgetting_laws.store.SCHEMA`) by a column map (schema column -> the table's column), so
everything downstream (fits, figures, report) speaks one set of names. The standard analysis
needs :data:`REQUIRED`; the schema's other columns are optional and filled with missing values.

Example
-------
>>> df = read_source("results.csv", parse_column_map("step=iter,trainable_params=params"))  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from ..errors import FitDataError
from ..store import SCHEMA, SCHEMA_VERSION, CorruptFile, check_version, load_runs

__all__ = ["REQUIRED", "POOLED", "parse_column_map", "map_columns", "conform", "read_source", "pooling_note",
           "warn_if_pooled", "group_label"]

#: Columns the standard analysis cannot do without.
REQUIRED = ("run_id", "rank", "step", "trainable_params", "ft_loss", "forget_loss")

#: Columns whose values a pooled fit should not mix (seeds are replicates and may be pooled).
POOLED = ("method", "model", "dataset", "reference", "lr")


def parse_column_map(text: str | None) -> dict[str, str]:
    """``"step=iter,trainable_params=params"`` -> ``{"step": "iter", "trainable_params": "params"}``."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        key, sep, col = (s.strip() for s in item.partition("="))
        if not sep or not key or not col:
            raise FitDataError(f"--columns item {item!r} is not SCHEMA_COLUMN=YOUR_COLUMN; write e.g. "
                               f"--columns step=iter,trainable_params=params")
        out[key] = col
    return out


def map_columns(df: pd.DataFrame, columns: dict[str, str] | None) -> pd.DataFrame:
    """Rename the table's columns to the schema's: ``columns`` maps schema column -> table column."""
    columns = dict(columns or {})
    for schema_col, user_col in columns.items():
        if schema_col not in SCHEMA:
            raise FitDataError(f"--columns {schema_col}={user_col}: {schema_col!r} is not a schema column; "
                               f"map one of {', '.join(SCHEMA)} (SCHEMA_COLUMN=YOUR_COLUMN)")
        if user_col not in df.columns:
            raise FitDataError(f"--columns {schema_col}={user_col}: the table has no column {user_col!r}; its "
                               f"columns are {', '.join(map(str, df.columns))}")
        if schema_col in df.columns and schema_col != user_col and schema_col not in columns.values():
            raise FitDataError(f"--columns {schema_col}={user_col}: the table already has a {schema_col!r} "
                               f"column; drop it or map {schema_col!r} to it alone")
    return df.rename(columns={u: s for s, u in columns.items()})


def conform(df: pd.DataFrame, required: tuple[str, ...] = REQUIRED, source: str = "the table") -> pd.DataFrame:
    """Check ``required`` columns are present and fill the schema's optional ones (missing values).

    A table without ``schema_version`` is taken to be of the current version (:func:`read_source`
    refuses one of another version).
    """
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise FitDataError(f"{source} lacks the required column(s) {', '.join(missing)} (it has "
                           f"{', '.join(map(str, df.columns))}); map yours with e.g. --columns "
                           f"{missing[0]}=YOUR_COLUMN")
    df = df.copy()
    for col, dtype in SCHEMA.items():
        if col not in df:
            # nullable integers: a missing seed is unknown, not 0
            df[col] = (SCHEMA_VERSION if col == "schema_version" else float("nan") if dtype == "float64"
                       else pd.Series(pd.NA, index=df.index).astype("Int64" if dtype == "int64" else dtype))
    if "run_id" in df:
        df["run_id"] = df["run_id"].astype("string")
    return df


def read_source(source: str | Path | pd.DataFrame, columns: dict[str, str] | None = None,
                required: tuple[str, ...] = REQUIRED) -> pd.DataFrame:
    """Rows from a runs folder, a .csv or .parquet file, or a DataFrame, renamed by ``columns``
    (schema column -> table column) and checked to hold ``required``."""
    folder = not isinstance(source, pd.DataFrame) and Path(source).is_dir()
    if isinstance(source, pd.DataFrame):
        df, name = source, "the table"
    else:
        path, name = Path(source), str(source)
        if folder:
            df = load_runs(path)
        elif not path.exists():
            raise FileNotFoundError(f"{path} does not exist; give a runs folder, a .csv or a .parquet file")
        else:
            df = _read_file(path)
    df = map_columns(df, columns)
    if not folder and "schema_version" in df and df["schema_version"].notna().any():  # load_runs checked a folder's
        check_version(df[df["schema_version"].notna()], name)
    df = conform(df, required, name) if required else df
    return df.sort_values(["run_id", "step"], ignore_index=True) if {"run_id", "step"} <= set(df) else df


def _read_file(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # pandas and pyarrow raise several kinds for a file that is not a table
        kind = "CSV" if path.suffix.lower() == ".csv" else "parquet"
        raise CorruptFile(path, f"not a readable {kind} file ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def pooling_note(df: pd.DataFrame, by: str | None = None) -> list[str]:
    """One line for each of :data:`POOLED` that takes several values in ``df`` (other than ``by``)."""
    notes = []
    for col in POOLED:
        if col == by or col not in df or df[col].isna().all():
            continue
        values = sorted(map(str, df[col].dropna().unique()))
        if len(values) > 1:
            shown = ", ".join(values[:6]) + (", ..." if len(values) > 6 else "")
            notes.append(f"runs differ in {col} ({shown}): the laws are fitted to them pooled; use --by {col}")
    return notes


def warn_if_pooled(df: pd.DataFrame, by: str | None = None) -> None:
    """Warn, by name, about each column a pooled fit mixes (see :func:`pooling_note`)."""
    for note in pooling_note(df, by):
        warnings.warn(note, UserWarning, stacklevel=3)


def group_label(by: str, value: object) -> str:
    """A file-name-safe label of one group, e.g. ``method=lora``."""
    text = "".join(c if c.isalnum() or c in "-._" else "_" for c in str(value))
    return f"{by}={text}"
