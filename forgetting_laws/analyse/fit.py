"""Fit scaling laws to sweep data: the entry points and the handling of tables.

:func:`fit` takes a DataFrame (e.g. from ``store.load_runs``), :func:`fit_arrays` plain
arrays; both return a :class:`~forgetting_laws.analyse.result.FitResult`. Every default comes
from the analysis policy (:mod:`forgetting_laws.analyse.policy`); keyword arguments named like
its fields (``bootstrap=0``, ``min_step=8``, ``loss="mse"``) override it for one call.

Examples
--------
>>> import numpy as np
>>> x = np.logspace(0, 3, 40)
>>> y = 1.0 + 2.0 * x**-0.5
>>> res = fit_arrays("power_law", {"x": x}, y, loss="mse", bootstrap=0)
>>> round(res.params["alpha"], 3)
0.5
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ..errors import FitDataError
from . import laws as _laws
from .diagnostics import error_metrics, metrics, warnings_for
from .engine import InputScaling, Problem, Solution, bootstrap, distinct, multistart, score_starts
from .laws import Law
from .policy import DEFAULT_POLICY, AnalysisPolicy
from .result import FitResult
from .uncertainty import (Intervals, NoiseModel, asymptotic_intervals, bootstrap_intervals, no_intervals,
                          noise_model, unidentified)

__all__ = ["FitResult", "FitDataError", "fit", "fit_arrays", "holdout_mask", "read_table"]


def fit(
    df: pd.DataFrame,
    law: str | Law | Any,
    x: Mapping[str, str] | None = None,
    y: str | Sequence[str] | None = None,
    policy: AnalysisPolicy | None = None,
    *,
    holdout: str | None = None,
    group: str | None = "run_id",
    n_refine: int = 16,
    progress: bool = False,
    **overrides: Any,
) -> FitResult:
    r"""Fit ``law`` to the columns of ``df``.

    The default objective is Chinchilla approach 3: Huber loss on log residuals,

    .. math:: \min_\theta \sum_i \mathrm{Huber}_\delta\left(\log f(x_i; \theta) - \log y_i\right).

    Parameters
    ----------
    df : DataFrame
        One row per observation (e.g. run x probe step).
    law : str, Law or lmfit.Model
        A registered name (see ``laws.names()``), a :class:`Law`, or an lmfit model.
    x : dict, optional
        Law input name -> column name; inputs not given use the column of the same name.
    y : str or tuple of str, optional
        Column(s) fitted; a joint law takes one per output. Default: the law's outputs.
    policy : AnalysisPolicy, optional
        The analysis policy (default :data:`~forgetting_laws.analyse.policy.DEFAULT_POLICY`):
        ``min_step`` (rows with ``step < min_step`` left out), ``loss``, ``delta``,
        ``bootstrap``, ``min_clusters``, ``ci_level``, ``seed``, ``n_jobs``.
    holdout : str, optional
        ``"COL:largest"``, ``"COL:largest:K"`` or ``"COL:last:FRAC"``: rows held out of the
        fit and scored afterwards (``metrics["holdout"]``: ARE, MAE, R^2 and the coverage of
        the prediction interval).
    group : str or None
        Column identifying correlated rows (a run): the bootstrap resamples whole groups and
        the noise model counts them. Absent or None: each row its own group.
    n_refine : int
        How many of the best-scoring grid starts are refined.
    progress : bool
        A progress bar on the bootstrap refits, to stderr.
    **overrides
        Policy fields for this call, e.g. ``bootstrap=0``.

    Returns
    -------
    FitResult

    Examples
    --------
    >>> res = fit(df, "chinchilla", x={"N": "params", "D": "tokens"}, y="loss")  # doctest: +SKIP
    """
    law = _resolve_law(law)
    policy = (policy or DEFAULT_POLICY).updated(**overrides)
    xmap, ycols = _resolve_columns(df, law, x, y)
    data, notes = _clean_rows(df, law, xmap, ycols, policy.min_step, group)
    _check_positive_columns(data, law, xmap, policy.min_step)
    held = holdout_mask(data, holdout) if holdout else np.zeros(len(data), dtype=bool)
    train = data[~held]
    res = fit_arrays(law, {i: train[c].to_numpy(float) for i, c in xmap.items()},
                     [train[c].to_numpy(float) for c in ycols], policy, groups=_groups(train, group),
                     n_refine=n_refine, progress=progress)
    res.x, res.y = dict(xmap), tuple(ycols)
    res.warnings[:0] = notes
    res.options.update(group=group if group in df.columns else None, holdout=holdout)
    if holdout:
        res.metrics["holdout"] = _holdout_metrics(res, data[held], xmap, ycols, holdout)
    return res


def fit_arrays(
    law: str | Law | Any,
    inputs: Mapping[str, Any],
    y: Any,
    policy: AnalysisPolicy | None = None,
    *,
    groups: Any = None,
    n_refine: int = 16,
    progress: bool = False,
    **overrides: Any,
) -> FitResult:
    """Fit ``law`` to plain arrays.

    Parameters
    ----------
    law : str, Law or lmfit.Model
    inputs : dict
        Law input name -> 1-D array.
    y : array or sequence of arrays
        Observed values; a joint law takes one array per output.
    policy : AnalysisPolicy, optional
        As in :func:`fit` (``min_step`` does not apply to arrays).
    groups : array, optional
        Group (run) of each row, rows of a group in measurement order (default: each row its
        own group).
    Other parameters as in :func:`fit`.

    Returns
    -------
    FitResult
    """
    law = _resolve_law(law)
    policy = (policy or DEFAULT_POLICY).updated(**overrides)
    X, Y, g, notes = _clean_arrays(law, inputs, y, groups)
    _check_values(law, X, Y, policy.loss)
    scaling = InputScaling.of(law, X)
    prob = Problem(law, scaling.inputs(X), Y.ravel(), policy.loss, policy.delta)
    with threadpool_limits(limits=1, user_api="blas"):  # small matrices: threads cost more than they give
        sols, starts = multistart(prob, scaling, n_refine)
        best = sols[0]
        noise = noise_model(prob.residuals(prob.evaluate_one(best.theta)), g, law.n_outputs, prob.n_free,
                            "log y" if prob.log_resid else "y")
        intervals = _intervals(prob, scaling, sols, starts, g, policy, noise, groups is not None, progress)
    res = _assemble(prob, scaling, best, intervals, noise, policy, X)
    res.warnings[:0] = notes
    res.start = _start_info(law, best, starts, sols, scaling)
    res.options = {"n_refine": n_refine, "input_scale": scaling.factors}
    return res


def _resolve_law(law: Any) -> Law:
    if isinstance(law, (str, Law)):
        return _laws.get(law)
    if hasattr(law, "make_params") and hasattr(law, "independent_vars"):
        return _laws.from_lmfit_model(law)
    raise FitDataError(f"law={law!r} is not a law name, a Law or an lmfit.Model; "
                       f"known laws: {', '.join(_laws.names())}")


# ---------------------------------------------------------------- intervals


def _intervals(prob: Problem, scaling: InputScaling, sols: list[Solution], starts: np.ndarray,
               groups: np.ndarray, policy: AnalysisPolicy, noise: NoiseModel | str, grouped: bool,
               progress: bool = False) -> Intervals:
    """Cluster bootstrap with enough clusters, else asymptotic intervals, else none (with the reason)."""
    n_clusters = np.unique(groups).size
    unit = "runs" if grouped else "rows"
    if policy.bootstrap and n_clusters >= policy.min_clusters:
        draws = scaling.to_user(_bootstrap_draws(prob, sols, starts, groups, policy, progress))
        note = f"{policy.bootstrap} resamples of {n_clusters} {unit}, refits from the optimum and fresh grid starts"
        return bootstrap_intervals(prob.law.params, prob.is_log, draws, policy.ci_level, note)
    if isinstance(noise, str):
        return no_intervals(prob.law.params, noise)
    why = (f"{n_clusters} {unit}, fewer than the {policy.min_clusters} a cluster bootstrap needs"
           if policy.bootstrap else "no bootstrap asked for")
    note = (f"{why}; Student t with {noise.dof:.1f} degrees of freedom, covariance scaled by the design "
            f"effect of correlated rows ({', '.join(f'{d:.2f}' for d in noise.design_effect)})")
    return asymptotic_intervals(prob, sols[0].theta, scaling, noise, policy.ci_level, note)


def _bootstrap_draws(prob: Problem, sols: list[Solution], starts: np.ndarray, groups: np.ndarray,
                     policy: AnalysisPolicy, progress: bool = False) -> np.ndarray:
    best = sols[0]
    # warm starts: the optimum plus other local optima nearly as good (a resample may prefer one)
    warm = [s.theta for s in distinct(sols, 2) if s.value <= 1.5 * best.value + 1e-300]
    scores = score_starts(prob, starts)
    fresh = np.unique(starts[np.argsort(scores, kind="stable")[:64]], axis=0)[:32]
    return bootstrap(prob, warm, fresh, groups, policy.bootstrap, policy.seed, policy.n_jobs,
                     progress=f"bootstrap {prob.law.name}" if progress else None)


# ---------------------------------------------------------------- data frames


def _resolve_columns(df: pd.DataFrame, law: Law, x: Mapping[str, str] | None,
                     y: str | Sequence[str] | None) -> tuple[dict[str, str], list[str]]:
    x = dict(x or {})
    unknown = [k for k in x if k not in law.inputs]
    if unknown:
        raise FitDataError(f"x names {unknown}, which are not inputs of law {law.name!r}; "
                           f"its inputs are {list(law.inputs)}")
    xmap = {i: x.get(i, i) for i in law.inputs}
    ycols = [y] if isinstance(y, str) else list(y if y is not None else law.outputs)
    if len(ycols) != law.n_outputs:
        raise FitDataError(f"y={y!r} gives {len(ycols)} column(s) but law {law.name!r} predicts "
                           f"{law.n_outputs} ({', '.join(law.outputs)}); give one column per output")
    for role, col in [*(("x", c) for c in xmap.values()), *(("y", c) for c in ycols)]:
        if col not in df.columns:
            raise FitDataError(f"column {col!r} (for {role}) not in the data; available columns: "
                               f"{', '.join(map(str, df.columns))}. Map it with x={{input: column}} or y=...")
    return xmap, ycols


def _clean_rows(df: pd.DataFrame, law: Law, xmap: Mapping[str, str], ycols: list[str], min_step: int,
                group: str | None) -> tuple[pd.DataFrame, list[str]]:
    """Rows from ``min_step`` on, without NaN/inf, each group's rows in step order."""
    notes: list[str] = []
    if "step" in df.columns:
        df = df[df["step"] >= min_step]
        keys = [k for k in (group, "step") if k is not None and k in df.columns]
        df = df.sort_values(keys, kind="stable")
    cols = list(dict.fromkeys([*xmap.values(), *ycols]))
    values = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        notes.append(_dropped_note(int(bad.sum()), len(df), cols))
        warnings.warn(notes[-1], stacklevel=3)
    return df[~bad], notes


def _check_positive_columns(df: pd.DataFrame, law: Law, xmap: Mapping[str, str], min_step: int) -> None:
    """A law input raised to a power must be > 0; step 0 rows are the usual culprit."""
    for i in law.positive_inputs:
        col = xmap[i]
        bad = df[col].to_numpy(float) <= 0
        if not bad.any():
            continue
        fix = (f"leave out step 0 with min_step=1 (CLI: --min-step 1); this fit used min_step={min_step}"
               if col == "step" else f"drop or shift the rows with {col} <= 0")
        raise FitDataError(f"input {i!r} (column {col!r}) of law {law.name!r} must be > 0 (it is raised to a "
                           f"power) but {int(bad.sum())} rows have {col} <= 0: {fix}")


def _dropped_note(n_bad: int, n: int, cols: Sequence[str]) -> str:
    return f"dropped {n_bad} of {n} rows with NaN or inf in {', '.join(map(str, cols))}"


def _groups(df: pd.DataFrame, group: str | None) -> np.ndarray | None:
    if group is not None and group in df.columns:
        return df[group].astype(str).to_numpy()
    return None


def holdout_mask(df: pd.DataFrame, spec: str) -> np.ndarray:
    """Rows to hold out under ``spec`` (``COL:largest[:K]`` or ``COL:last:FRAC``)."""
    parts = str(spec).split(":")
    fix = "use 'COL:largest', 'COL:largest:K' or 'COL:last:FRAC' (e.g. 'rank:largest', 'step:last:0.3')"
    if len(parts) not in (2, 3) or parts[1] not in ("largest", "last"):
        raise FitDataError(f"holdout={spec!r} is not understood; {fix}")
    col = parts[0]
    if col not in df.columns:
        raise FitDataError(f"holdout column {col!r} not in the data; available columns: "
                           f"{', '.join(map(str, df.columns))}")
    levels = np.unique(df[col].to_numpy())
    try:
        k = _holdout_count(parts, levels.size)
    except ValueError as err:
        raise FitDataError(f"holdout={spec!r}: {err}; {fix}") from None
    return df[col].isin(levels[levels.size - k:]).to_numpy()


def _holdout_count(parts: list[str], n_levels: int) -> int:
    if parts[1] == "largest":
        k = int(parts[2]) if len(parts) == 3 else 1
    else:
        frac = float(parts[2]) if len(parts) == 3 else float("nan")
        if not 0 < frac < 1:
            raise ValueError(f"fraction {parts[-1]!r} must lie in (0, 1)")
        k = math.ceil(frac * n_levels)
    if not 1 <= k < n_levels:
        raise ValueError(f"holding out {k} of {n_levels} distinct values leaves nothing to fit or hold out")
    return k


def _holdout_metrics(res: FitResult, held: pd.DataFrame, xmap: Mapping[str, str],
                     ycols: list[str], spec: str) -> dict[str, Any]:
    """Errors of the predictions on the held-out rows and the coverage of their prediction interval."""
    inputs = {i: held[c].to_numpy(float) for i, c in xmap.items()}
    pred = np.ravel(res.predict(**inputs))
    obs = np.concatenate([held[c].to_numpy(float) for c in ycols])
    out = {"spec": spec, "n": int(obs.size), **error_metrics(obs, pred)}
    try:
        lo, hi = res.prediction_interval(**inputs)
    except FitDataError as err:
        out["coverage"], out["coverage_note"] = None, str(err)
        return out
    inside = (np.ravel(lo) <= obs) & (obs <= np.ravel(hi))
    out["coverage"], out["covered"] = float(inside.mean()), int(inside.sum())
    return out


def read_table(path: str | Path | pd.DataFrame, columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Rows to fit from a runs folder (checked by :func:`~forgetting_laws.load_runs`), a .parquet or a
    .csv file, or a DataFrame; ``columns`` renames table columns to the schema's (schema column ->
    table column, see :func:`~forgetting_laws.analyse.tables.map_columns`)."""
    from .tables import read_source

    return read_source(path, dict(columns or {}), required=())


# ---------------------------------------------------------------- arrays


def _clean_arrays(law: Law, inputs: Mapping[str, Any], y: Any,
                  groups: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[str]]:
    missing = [i for i in law.inputs if i not in inputs]
    if missing:
        raise FitDataError(f"inputs {missing} missing for law {law.name!r} (it takes {list(law.inputs)}); "
                           f"got {list(inputs)}")
    X = {i: np.asarray(inputs[i], dtype=float).ravel() for i in law.inputs}
    Y = np.atleast_2d(np.asarray(y, dtype=float))
    if Y.shape[0] != law.n_outputs:
        raise FitDataError(f"law {law.name!r} predicts {law.n_outputs} output(s) but y has {Y.shape[0]}; "
                           "give one array per output")
    n = Y.shape[1]
    lengths = {i: a.size for i, a in X.items() if a.size != n}
    if lengths:
        raise FitDataError(f"inputs {lengths} do not have the {n} rows of y; give arrays of equal length")
    g = np.arange(n) if groups is None else np.asarray(groups).ravel()
    ok = np.isfinite(Y).all(axis=0) & np.all([np.isfinite(a) for a in X.values()], axis=0)
    notes = [] if ok.all() else [_dropped_note(int((~ok).sum()), n, [*law.inputs, "y"])]
    if notes:
        warnings.warn(notes[0], stacklevel=3)
    return {i: a[ok] for i, a in X.items()}, Y[:, ok], g[ok], notes


def _check_values(law: Law, X: Mapping[str, np.ndarray], Y: np.ndarray, loss: str) -> None:
    n, p = Y.shape[1], len(law.params)
    if Y.size < p + 1:
        raise FitDataError(f"{n} data points are too few for law {law.name!r} with {p} parameters; "
                           f"give at least {p + 1 - Y.size + n} points (after dropping NaN rows)")
    for i in law.positive_inputs:
        if np.any(X[i] <= 0):
            raise FitDataError(f"input {i!r} of law {law.name!r} must be > 0 (it is raised to a power); "
                               f"got min {X[i].min():g}. Drop or shift the non-positive rows")
    if loss.endswith("_log") and np.any(Y <= 0):
        raise FitDataError(f"loss={loss!r} takes logs of y but y has values <= 0 (min {Y.min():g}); "
                           "use loss='mse' or drop those rows")


# ---------------------------------------------------------------- assembling the result


def _assemble(prob: Problem, scaling: InputScaling, best: Solution, iv: Intervals, noise: NoiseModel | str,
              policy: AnalysisPolicy, X: Mapping[str, np.ndarray]) -> FitResult:
    law = prob.law
    theta = scaling.to_user(best.theta)
    params = dict(zip(law.params, map(float, theta)))
    pred = prob.evaluate_one(best.theta)  # = the law at the user's inputs and parameters
    res = FitResult(
        law_name=law.name, params=params, stderr=iv.stderr, ci=iv.ci,
        metrics=metrics(prob, best.theta, pred, best.value, law.outputs), warnings=[],
        correlation=iv.correlation, draws=_draws(iv, law), inputs=dict(X), y_obs=prob.y.copy(),
        fitted=pred, policy=policy, covariance=iv.covariance,
        noise=noise if isinstance(noise, NoiseModel) else None,
        noise_note="" if isinstance(noise, NoiseModel) else noise,
        interval_method=iv.method, interval_note=iv.note, _law=law,
    )
    res.unidentified = unidentified(law, params, iv.ci, policy.ci_level)
    res.warnings += warnings_for(prob, res, best)
    return res


def _draws(iv: Intervals, law: Law) -> np.ndarray:
    return iv.draws if iv.draws.size else np.zeros((0, len(law.params)))


def _start_info(law: Law, best: Solution, starts: np.ndarray, sols: list[Solution],
                scaling: InputScaling) -> dict[str, Any]:
    return {
        "index": int(best.start), "n_starts": int(starts.shape[0]), "n_refined": len(sols),
        "values": dict(zip(law.params, map(float, scaling.to_user(starts[best.start])))),
        "iterations": int(best.nit), "converged": bool(best.converged),
        "objectives": [float(s.value) for s in sols],
    }
