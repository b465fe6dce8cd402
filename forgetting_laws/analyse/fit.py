"""Fit scaling laws to sweep data: multistart optimisation, bootstrap, validation.

The entry points are :func:`fit` (a DataFrame, e.g. from ``store.load_runs``)
and :func:`fit_arrays` (plain arrays). Both return a :class:`~forgetting_laws.analyse.result.FitResult`.

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
from scipy import stats
from scipy.optimize import minimize_scalar
from threadpoolctl import threadpool_limits

from ..errors import FitDataError
from ..store import load_runs
from . import laws as _laws
from .engine import LOSSES, Problem, bootstrap as _bootstrap, distinct, multistart
from .laws import Law
from .result import FitResult

__all__ = ["FitResult", "FitDataError", "fit", "fit_arrays", "holdout_mask", "read_table"]

CORR_LIMIT = 0.99


def fit(
    df: pd.DataFrame,
    law: str | Law | Any,
    x: Mapping[str, str] | None = None,
    y: str | Sequence[str] | None = None,
    loss: str = "huber_log",
    delta: float = 1e-3,
    bootstrap: int = 1000,
    group: str | None = "run_id",
    holdout: str | None = None,
    min_step: int = 0,
    seed: int = 0,
    ci_level: float = 0.95,
    n_refine: int = 16,
    n_jobs: int = 1,
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
    loss : {"huber_log", "mse", "mse_log"}
    delta : float
        Huber threshold (on log residuals).
    bootstrap : int
        Number of bootstrap refits resampling whole groups; 0 skips the bootstrap.
    group : str or None
        Column identifying correlated rows (a run); absent or None: each row its own group.
    holdout : str, optional
        ``"COL:largest"``, ``"COL:largest:K"`` or ``"COL:last:FRAC"``: rows held out of the
        fit and scored afterwards (ARE, MAE, R^2 in ``metrics["holdout"]``).
    min_step : int
        Drop rows with ``step < min_step`` (when a ``step`` column exists).
    seed : int
        Seed of the bootstrap.
    ci_level : float
        Level of the confidence intervals.
    n_refine : int
        How many of the best-scoring grid starts are refined with L-BFGS-B.
    n_jobs : int
        Processes for the bootstrap (1: in this process). Results do not depend on it.

    Returns
    -------
    FitResult

    Examples
    --------
    >>> res = fit(df, "chinchilla", x={"N": "params", "D": "tokens"}, y="loss")  # doctest: +SKIP
    """
    law = _resolve_law(law)
    xmap, ycols = _resolve_columns(df, law, x, y)
    data, notes = _clean_rows(df, law, xmap, ycols, min_step)
    held = holdout_mask(data, holdout) if holdout else np.zeros(len(data), dtype=bool)
    train = data[~held]
    groups = _groups(train, group)
    res = fit_arrays(
        law, {i: train[c].to_numpy(float) for i, c in xmap.items()},
        [train[c].to_numpy(float) for c in ycols], loss=loss, delta=delta, bootstrap=bootstrap,
        groups=groups, seed=seed, ci_level=ci_level, n_refine=n_refine, n_jobs=n_jobs,
    )
    res.x, res.y = dict(xmap), tuple(ycols)
    res.warnings[:0] = notes
    res.options.update(group=group, holdout=holdout, min_step=min_step)
    if holdout:
        res.metrics["holdout"] = _holdout_metrics(res, data[held], xmap, ycols, holdout)
    return res


def fit_arrays(
    law: str | Law | Any,
    inputs: Mapping[str, Any],
    y: Any,
    loss: str = "huber_log",
    delta: float = 1e-3,
    bootstrap: int = 1000,
    groups: Any = None,
    seed: int = 0,
    ci_level: float = 0.95,
    n_refine: int = 16,
    n_jobs: int = 1,
) -> FitResult:
    """Fit ``law`` to plain arrays.

    Parameters
    ----------
    law : str, Law or lmfit.Model
    inputs : dict
        Law input name -> 1-D array.
    y : array or sequence of arrays
        Observed values; a joint law takes one array per output.
    groups : array, optional
        Group label of each row for the bootstrap (default: each row its own group).
    Other parameters as in :func:`fit`.

    Returns
    -------
    FitResult
    """
    law = _resolve_law(law)
    _check_options(loss, delta, bootstrap, ci_level)
    X, Y, g, notes = _clean_arrays(law, inputs, y, groups)
    _check_values(law, X, Y, loss)
    prob = Problem(law, X, Y.ravel(), loss, delta)
    with threadpool_limits(limits=1, user_api="blas"):  # small matrices: threads cost more than they give
        sols, starts = multistart(prob, n_refine)
        best = sols[0]
        # warm starts: the optimum plus other local optima nearly as good (a resample may prefer one)
        warm = [s.theta for s in distinct(sols, 3) if s.value <= 1.5 * best.value + 1e-300]
        draws = (_bootstrap(prob, warm, g, bootstrap, seed, n_jobs) if bootstrap
                 else np.zeros((0, len(law.params))))
        res = _assemble(prob, best, draws, ci_level, g)
    res.warnings[:0] = notes
    res.start = _start_info(law, best, starts, sols)
    res.options = {"n_refine": n_refine, "bootstrap": bootstrap, "seed": seed, "n_jobs": n_jobs}
    return res


def _resolve_law(law: Any) -> Law:
    if isinstance(law, (str, Law)):
        return _laws.get(law)
    if hasattr(law, "make_params") and hasattr(law, "independent_vars"):
        return _laws.from_lmfit_model(law)
    raise FitDataError(f"law={law!r} is not a law name, a Law or an lmfit.Model; "
                       f"known laws: {', '.join(_laws.names())}")


def _check_options(loss: str, delta: float, bootstrap: int, ci_level: float) -> None:
    if loss not in LOSSES:
        raise FitDataError(f"loss={loss!r} is not supported; choose one of {', '.join(LOSSES)}")
    if not delta > 0:
        raise FitDataError(f"delta={delta!r} must be > 0 (the Huber threshold, e.g. 1e-3)")
    if int(bootstrap) != bootstrap or bootstrap < 0:
        raise FitDataError(f"bootstrap={bootstrap!r} must be an integer >= 0 (0 skips the bootstrap)")
    if not 0 < ci_level < 1:
        raise FitDataError(f"ci_level={ci_level!r} must lie in (0, 1), e.g. 0.95")


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


def _clean_rows(df: pd.DataFrame, law: Law, xmap: Mapping[str, str], ycols: list[str],
                min_step: int) -> tuple[pd.DataFrame, list[str]]:
    notes: list[str] = []
    if min_step and "step" in df.columns:
        df = df[df["step"] >= min_step]
    cols = list(dict.fromkeys([*xmap.values(), *ycols]))
    values = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        notes.append(_dropped_note(int(bad.sum()), len(df), cols))
        warnings.warn(notes[-1], stacklevel=3)
    return df[~bad], notes


def _dropped_note(n_bad: int, n: int, cols: Sequence[str]) -> str:
    return f"dropped {n_bad} of {n} rows with NaN or inf in {', '.join(map(str, cols))}"


def _groups(df: pd.DataFrame, group: str | None) -> np.ndarray:
    if group is not None and group in df.columns:
        return df[group].astype(str).to_numpy()
    return np.arange(len(df))


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
    pred = np.ravel(res.predict(**{i: held[c].to_numpy(float) for i, c in xmap.items()}))
    obs = np.concatenate([held[c].to_numpy(float) for c in ycols])
    out = {"spec": spec, "n": int(obs.size), **_error_metrics(obs, pred)}
    if res.draws.size:
        lo, hi = res.predict_interval(res.ci_level, **{i: held[c].to_numpy(float) for i, c in xmap.items()})
        out["coverage"] = float(np.mean((np.ravel(lo) <= obs) & (obs <= np.ravel(hi))))
    return out


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


def _assemble(prob: Problem, best: Any, draws: np.ndarray, ci_level: float,
              groups: np.ndarray) -> FitResult:
    law, theta = prob.law, best.theta
    pred = prob.evaluate_one(theta)
    cov_u = _gauss_newton_cov(prob, theta)
    corr, stderr, ci = _uncertainty(prob, theta, cov_u, draws, ci_level)
    res = FitResult(
        law_name=law.name, params=dict(zip(law.params, map(float, theta))),
        stderr=stderr, ci=ci, metrics=_metrics(prob, theta, pred, best.value),
        warnings=[], correlation=corr, draws=draws, inputs=dict(prob.X), y_obs=prob.y.copy(),
        fitted=pred, loss=prob.loss, delta=prob.delta, ci_level=ci_level, _law=law,
    )
    res.warnings += _identifiability_warnings(prob, res, groups, best)
    return res


def _gauss_newton_cov(prob: Problem, theta: np.ndarray) -> np.ndarray:
    """Covariance of u (optimiser scale) from the residual Jacobian: s^2 (J J^T)^+."""
    pred = prob.evaluate_one(theta)
    J = prob.jac_u(theta)  # (p, m)
    r = prob.residuals(pred)
    if prob.log_resid:
        J = J / pred
    free = ~prob.gauge  # gauge parameters are held fixed: zero variance
    dof = max(r.size - int(free.sum()), 1)
    cov = np.zeros((theta.size, theta.size))
    cov[np.ix_(free, free)] = float(r @ r) / dof * np.linalg.pinv(J[free] @ J[free].T)
    return cov


def _uncertainty(prob: Problem, theta: np.ndarray, cov_u: np.ndarray, draws: np.ndarray,
                 level: float) -> tuple[np.ndarray, dict[str, float], dict[str, tuple[float, float]]]:
    names = prob.law.params
    q = 100 * (1 - level) / 2
    if draws.shape[0] > 1:
        du = np.array([prob.to_u(d) for d in draws])
        corr = _corrcoef(du)
        with np.errstate(over="ignore", invalid="ignore"):  # an unidentified parameter may wander off
            stderr = dict(zip(names, map(float, draws.std(axis=0, ddof=1))))
        lo, hi = np.percentile(draws, q, axis=0), np.percentile(draws, 100 - q, axis=0)
    else:
        sd_u = np.sqrt(np.clip(np.diag(cov_u), 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(np.outer(sd_u, sd_u) > 0, cov_u / np.outer(sd_u, sd_u), np.nan)
        scale = np.where(prob.is_log, theta, 1.0)  # delta method: d theta / d u
        se = sd_u * scale
        stderr = dict(zip(names, map(float, se)))
        z = stats.norm.ppf(1 - q / 100)
        u = prob.to_u(theta)  # symmetric on the optimiser's scale: positive params stay positive
        lo, hi = prob.to_theta(u - z * sd_u), prob.to_theta(u + z * sd_u)
    ci = {p: (float(a), float(b)) for p, a, b in zip(names, lo, hi)}
    return np.clip(corr, -1, 1), stderr, ci


def _corrcoef(u: np.ndarray) -> np.ndarray:
    sd = u.std(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.cov(u, rowvar=False) / np.outer(sd, sd) * (u.shape[0] - 1) / u.shape[0]
    return np.atleast_2d(c)


def _error_metrics(obs: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    err = pred - obs
    ss_tot = float(np.sum((obs - obs.mean()) ** 2))
    return {
        "are": float(np.mean(np.abs(err) / np.abs(obs))),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": 1.0 - float(err @ err) / ss_tot if ss_tot > 0 else float("nan"),
    }


def _metrics(prob: Problem, theta: np.ndarray, pred: np.ndarray, objective: float) -> dict[str, Any]:
    n, k = prob.y.size, theta.size + 1  # +1: the noise scale
    loglik = _loglik(prob.residuals(pred), prob.loss, prob.delta)
    inputs = {i: np.tile(a, prob.law.n_outputs) for i, a in prob.X.items()}
    resid = prob.y - pred
    rank_corr = {i: _spearman(a, resid) for i, a in inputs.items()}
    return {
        "n": int(n), "n_params": int(theta.size), "objective": float(objective),
        **_error_metrics(prob.y, pred), "loglik": loglik,
        "aic": 2 * k - 2 * loglik, "bic": k * math.log(n) - 2 * loglik,
        "likelihood": "huber" if prob.loss == "huber_log" else "gaussian",
        "likelihood_scale": "log y" if prob.log_resid else "y",
        "rank_corr": {i: v[0] for i, v in rank_corr.items()},
        "rank_corr_p": {i: v[1] for i, v in rank_corr.items()},
    }


def _spearman(a: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    if np.ptp(a) == 0 or np.ptp(r) == 0:
        return float("nan"), float("nan")
    out = stats.spearmanr(a, r)
    return float(out.statistic), float(out.pvalue)


def _loglik(r: np.ndarray, loss: str, delta: float) -> float:
    """Maximised log-likelihood of the residuals: Gaussian, or Huber with a fitted scale."""
    n = r.size
    if loss != "huber_log":
        s2 = max(float(r @ r) / n, 1e-300)
        return -0.5 * n * (math.log(2 * math.pi * s2) + 1)
    a = np.abs(r)
    S = float(np.sum(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))))

    def neg(log_tau: float) -> float:  # density exp(-H(r)/tau) / Z(tau)
        tau = math.exp(log_tau)
        core = math.sqrt(2 * math.pi * tau) * (2 * stats.norm.cdf(delta / math.sqrt(tau)) - 1)
        tails = 2 * tau / delta * math.exp(-delta * delta / (2 * tau))
        return S / tau + n * math.log(core + tails)

    guess = math.log(max(S / n, 1e-300))
    best = minimize_scalar(neg, bounds=(guess - 20, guess + 20), method="bounded")
    return -float(best.fun)


def _identifiability_warnings(prob: Problem, res: FitResult, groups: np.ndarray, best: Any) -> list[str]:
    out = []
    for i in prob.law.positive_inputs:
        lo, hi = prob.X[i].min(), prob.X[i].max()
        if hi < 10 * lo:
            out.append(f"input {i!r} spans less than a decade ({lo:g} to {hi:g}, x{hi / lo:.2g}): "
                       f"exponents acting on {i} are weakly identified")
    names = prob.law.params
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            c = res.correlation[a, b]
            if np.isfinite(c) and abs(c) > CORR_LIMIT:
                out.append(f"parameters {names[a]!r} and {names[b]!r} are correlated (corr = {c:+.4f}): "
                           "they are not separately identifiable, only a combination of them is")
    out += _ci_warnings(prob.law, res)
    for p in prob.law.gauge:
        out.append(f"parameter {p!r} is held at {res.params[p]:.6g}: law {prob.law.name!r} is invariant "
                   f"under a rescaling that {p} can absorb, so it carries no information of its own")
    if not best.converged:
        out.append("the optimiser did not report convergence at the best start; check the fit")
    if res.draws.shape[0] and np.unique(groups).size < 5:
        out.append(f"the bootstrap resamples only {np.unique(groups).size} groups: its CIs are unreliable")
    return out


def _ci_warnings(law: Law, res: FitResult) -> list[str]:
    out = []
    for p, (lo, hi) in res.ci.items():
        blo, bhi = law.bound(p)
        tol_lo, tol_hi = 1e-6 * max(1, abs(blo)), 1e-6 * max(1, abs(bhi))
        if (np.isfinite(blo) and lo <= blo + tol_lo) or (np.isfinite(bhi) and hi >= bhi - tol_hi):
            out.append(f"the CI of {p!r} ({lo:.4g}, {hi:.4g}) reaches its bound ({blo:g}, {bhi:g}): "
                       f"{p} is not identified by these data")
        elif p in law.log_params and lo > 0 and hi / lo > 1e3:
            out.append(f"the CI of {p!r} ({lo:.4g}, {hi:.4g}) spans {math.log10(hi / lo):.1f} decades: "
                       f"{p} is not identified by these data")
    return out


def _start_info(law: Law, best: Any, starts: np.ndarray, sols: list[Any]) -> dict[str, Any]:
    return {
        "index": int(best.start), "n_starts": int(starts.shape[0]), "n_refined": len(sols),
        "values": dict(zip(law.params, map(float, starts[best.start]))),
        "iterations": int(best.nit), "converged": bool(best.converged),
        "objectives": [float(s.value) for s in sols],
    }


def read_table(path: str | Path) -> pd.DataFrame:
    """Rows to fit from a runs folder (checked by :func:`~forgetting_laws.load_runs`), a .parquet or a .csv file."""
    path = Path(path)
    if path.is_dir():
        return load_runs(path)  # a runs folder: the schema version is checked
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a .parquet file or a runs folder")
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


