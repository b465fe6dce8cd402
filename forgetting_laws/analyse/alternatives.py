r"""Laws against their alternatives, and held-out predictions against simple baselines.

The inverse-linear law says that forgetting depends on fine-tuning progress alone:
:math:`L_f = s - c\,L_{ft}`, whatever the rank. :func:`inverse_linear_alternatives` puts that
to the test with ordinary least squares (beside the robust Huber fit), against

* **per-run lines** :math:`L_f = s_r - c_r L_{ft}` (one line per run, i.e. per rank when each
  rank ran once): does the relation differ between runs?
* **a line plus** :math:`d \log P`: at matched :math:`L_{ft}`, does forgetting move with the
  number of fine-tuned parameters?
* **a quadratic** :math:`L_f = s - c L_{ft} + q L_{ft}^2`: is the relation curved?

each by an F test of the nested least-squares fits,
:math:`F = \frac{(RSS_0 - RSS_1)/(p_1 - p_0)}{RSS_1/(n - p_1)}`, and by AIC
(:math:`n \log(RSS/n) + 2p`). The F test takes rows as independent; rows of one run are not,
so its p-values are optimistic, and with one run per rank a rank effect and a run-to-run
difference look alike: seeds per rank separate them.

:func:`holdout_baselines` puts each held-out prediction beside what a user would do without
the law: at each step, the straight line in :math:`\log P` through the two fitted ranks nearest
to a held-out rank and a straight line in :math:`\log N` through each run's fitted steps (for
held-out steps). Errors are given relative to :math:`L_f` and relative to its rise since
step 0, the part a law of forgetting has to predict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import FitDataError
from .fit import fit, holdout_mask
from .policy import DEFAULT_POLICY, AnalysisPolicy
from .result import FitResult

__all__ = ["Alternative", "LawTest", "inverse_linear_alternatives", "holdout_baselines", "ols"]


def ols(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares coefficients of ``y`` on the columns of ``X`` (n, k) and the residual sum of squares."""
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    r = y - X @ beta
    return beta, float(r @ r)


@dataclass
class Alternative:
    """One alternative model against the law (the null): its fit and the tests."""

    name: str
    formula: str
    n_params: int
    rss: float
    aic: float
    f: float
    df: tuple[int, int]
    p_value: float


@dataclass
class LawTest:
    """The inverse-linear law tested against its alternatives on one sweep.

    Attributes
    ----------
    n, n_runs : int
        Rows and runs tested.
    ols : dict
        Ordinary least squares ``c``, ``s`` (data scale), beside ``huber``: the robust fit's.
    per_run_slopes : dict
        Run label (``r = <rank>``) -> its own slope c_r.
    null_aic : float
        AIC of the pooled line.
    alternatives : list of Alternative
    answer : str
        The answer to "at matched L_ft, does L_f depend on P?", with its test.
    """

    n: int
    n_runs: int
    ols: dict[str, float]
    huber: dict[str, float]
    per_run_slopes: dict[str, float]
    null_aic: float
    alternatives: list[Alternative] = field(default_factory=list)
    answer: str = ""
    level: float = 0.95

    def report(self) -> str:
        lines = [f"inverse-linear law L_f = s - c L_ft against its alternatives ({self.n} rows of {self.n_runs} runs):",
                 f"  least squares: c = {self.ols['c']:.4g}, s = {self.ols['s']:.4g};  "
                 f"Huber on log: c = {self.huber['c']:.4g}, s = {self.huber['s']:.4g}",
                 "  per-run slopes: " + ", ".join(f"{k}: {v:.3g}" for k, v in self.per_run_slopes.items()),
                 f"  {'model':<28} {'params':>6} {'AIC':>9} {'F':>8} {'df':>8} {'p':>9}",
                 f"  {'pooled line (the law)':<28} {2:>6} {self.null_aic:>9.2f}"]
        lines += [f"  {a.name:<28} {a.n_params:>6} {a.aic:>9.2f} {a.f:>8.3g} {f'{a.df[0]},{a.df[1]}':>8} "
                  f"{a.p_value:>9.2g}" for a in self.alternatives]
        lines.append(f"  {self.answer}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


def _aic(rss: float, n: int, p: int) -> float:
    return n * np.log(rss / n) + 2 * p


def _f_test(rss0: float, p0: int, rss1: float, p1: int, n: int) -> tuple[float, tuple[int, int], float]:
    df1, df2 = p1 - p0, n - p1
    if df1 < 1 or df2 < 1 or rss1 <= 0:
        return float("nan"), (df1, df2), float("nan")
    f = (rss0 - rss1) / df1 / (rss1 / df2)
    return float(f), (df1, df2), float(stats.f.sf(f, df1, df2))


def inverse_linear_alternatives(df: pd.DataFrame, policy: AnalysisPolicy | None = None,
                                x: str = "ft_loss", y: str = "forget_loss", **overrides: Any) -> LawTest:
    """Test the inverse-linear law on a sweep's rows (steps from ``policy.min_step`` on).

    Raises
    ------
    FitDataError
        With fewer than 2 runs, or too few rows for the per-run lines.
    """
    policy = (policy or DEFAULT_POLICY).updated(**overrides)
    rows = df[df["step"] >= policy.min_step] if "step" in df.columns else df
    rows = rows.dropna(subset=[x, y])
    runs = rows["run_id"].astype(str).to_numpy()
    labels = np.unique(runs)
    n = len(rows)
    if labels.size < 2 or n < 2 * labels.size + 2:
        raise FitDataError(f"testing the inverse-linear law needs >= 2 runs and more rows than 2 per run; got "
                           f"{labels.size} runs and {n} rows (from step {policy.min_step} on)")
    L, F = rows[x].to_numpy(float), rows[y].to_numpy(float)
    one = np.ones(n)
    (s0, neg_c), rss0 = ols(np.column_stack([one, L]), F)
    huber = fit(rows, "inverse_linear", x={"L_ft": x}, y=y, policy=policy, bootstrap=0)
    test = LawTest(n=n, n_runs=labels.size, ols={"c": -neg_c, "s": s0},
                   huber={"c": huber.params["c"], "s": huber.params["s"]},
                   per_run_slopes=_per_run_slopes(rows, runs, L, F), null_aic=_aic(rss0, n, 2), level=policy.ci_level)
    test.alternatives = [_alternative(name, formula, X, F, rss0, n) for name, formula, X in _designs(rows, runs, L)]
    test.answer = _answer(test, policy)
    return test


def _designs(rows: pd.DataFrame, runs: np.ndarray, L: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    one = np.ones(L.size)
    dummies = (runs[:, None] == np.unique(runs)[None, :]).astype(float)
    out = [("per-run lines", "L_f = s_r - c_r L_ft", np.hstack([dummies, dummies * L[:, None]])),
           ("quadratic", "L_f = s - c L_ft + q L_ft^2", np.column_stack([one, L, L**2]))]
    if "trainable_params" in rows.columns and rows["trainable_params"].nunique() > 1:
        logP = np.log(rows["trainable_params"].to_numpy(float))
        out.insert(1, ("line + d log P", "L_f = s - c L_ft + d log P", np.column_stack([one, L, logP])))
    return out


def _alternative(name: str, formula: str, X: np.ndarray, F: np.ndarray, rss0: float, n: int) -> Alternative:
    _, rss = ols(X, F)
    p = int(np.linalg.matrix_rank(X))
    f, dfs, pval = _f_test(rss0, 2, rss, p, n)
    return Alternative(name, formula, p, rss, _aic(rss, n, p), f, dfs, pval)


def _per_run_slopes(rows: pd.DataFrame, runs: np.ndarray, L: np.ndarray, F: np.ndarray) -> dict[str, float]:
    out = {}
    for label in np.unique(runs):
        m = runs == label
        rank = rows.loc[m, "rank"].iloc[0] if "rank" in rows.columns else label
        out[f"r = {rank}" if "rank" in rows.columns else str(label)] = -ols(np.column_stack([np.ones(m.sum()), L[m]]),
                                                                             F[m])[0][1]
    return dict(sorted(out.items(), key=lambda kv: _rank_key(kv[0])))


def _rank_key(label: str) -> tuple[int, Any]:
    tail = label.removeprefix("r = ")
    return (0, int(tail)) if tail.isdigit() else (1, tail)


def _answer(test: LawTest, policy: AnalysisPolicy) -> str:
    alpha = 1 - policy.ci_level
    by_name = {a.name: a for a in test.alternatives}
    key = by_name.get("line + d log P") or by_name["per-run lines"]
    runs = by_name["per-run lines"]
    depends = key.p_value < alpha or runs.p_value < alpha
    text = (f"at matched L_ft, L_f depends on P: {'yes' if depends else 'no evidence'} "
            f"({key.name}: F({key.df[0]}, {key.df[1]}) = {key.f:.3g}, p = {key.p_value:.2g}; "
            f"{runs.name}: F({runs.df[0]}, {runs.df[1]}) = {runs.f:.3g}, p = {runs.p_value:.2g}, "
            f"AIC {runs.aic - test.null_aic:+.1f} against the pooled line)")
    quad = by_name["quadratic"]
    text += (f"; curvature: {'significant' if quad.p_value < alpha else 'not significant'} "
             f"(p = {quad.p_value:.2g}). Rows of a run are correlated, so these p-values are optimistic")
    if test.n_runs == len(test.per_run_slopes):
        text += "; with one run per rank, a rank effect and a run-to-run difference look alike"
    return text + "."


# ---------------------------------------------------------------- held-out baselines


def holdout_baselines(df: pd.DataFrame, res: FitResult) -> dict[str, Any]:
    """Add to ``res.metrics["holdout"]`` the error relative to the rise since step 0 and the simple
    baselines' errors on the same held-out rows; returns the updated holdout metrics.

    ``df`` is the sweep (with its step 0 rows); ``res`` was fitted on it with a holdout on
    ``rank`` / ``trainable_params`` (a new rank) or on ``step`` (later steps).
    """
    held = res.metrics.get("holdout")
    if not held or len(res.y) != 1:
        return held or {}
    col, ycol = held["spec"].split(":")[0], res.y[0]
    rows = df[df["step"] >= res.policy.min_step].reset_index(drop=True)
    mask = holdout_mask(rows, held["spec"])
    test, train = rows[mask], rows[~mask]
    base = _step0_values(df, ycol)
    obs = test[ycol].to_numpy(float)
    rise = np.abs(obs - test["run_id"].map(base).to_numpy(float))
    pred = np.ravel(res.predict(**{i: test[c].to_numpy(float) for i, c in res.x.items()}))
    held["rise_are"] = _rise_error(pred, obs, rise)
    baselines = []
    if col in ("rank", "trainable_params"):
        baselines.append(("line in log P through the 2 nearest ranks", _line_in_log_p(train, test, ycol)))
    if col == "step":
        baselines.append(("per-run line in log N", _line_in_log_n(train, test, ycol)))
    held["baselines"] = [{"name": name, "are": float(np.mean(np.abs(p - obs)[ok] / np.abs(obs[ok]))),
                          "rise_are": _rise_error(p, obs, rise)}
                         for name, p in baselines if (ok := np.isfinite(p)).any()]
    return held


def _rise_error(pred: np.ndarray, obs: np.ndarray, rise: np.ndarray) -> float | None:
    ok = np.isfinite(rise) & (rise > 0) & np.isfinite(pred)
    return float(np.mean(np.abs(pred[ok] - obs[ok]) / rise[ok])) if ok.any() else None


def _step0_values(df: pd.DataFrame, ycol: str) -> pd.Series:
    """Each run's value of ``ycol`` at step 0 (NaN for runs without a step 0 row)."""
    first = df[df["step"] == 0].groupby("run_id")[ycol].first()
    return first.reindex(df["run_id"].unique())


def _line_in_log_p(train: pd.DataFrame, test: pd.DataFrame, ycol: str) -> np.ndarray:
    """At each held-out step: the straight line in log P through the two fitted ranks nearest to the
    held-out one (in log P), extended to it."""
    out = np.full(len(test), np.nan)
    for k, (step, P) in enumerate(zip(test["step"], test["trainable_params"])):
        same = train[train["step"] == step]
        logp = np.log(same["trainable_params"].to_numpy(float))
        if np.unique(logp).size < 2:
            continue
        near = np.argsort(np.abs(logp - np.log(P)), kind="stable")[:2]
        (a, b), _ = ols(np.column_stack([np.ones(2), logp[near]]), same[ycol].to_numpy(float)[near])
        out[k] = a + b * np.log(P)
    return out


def _line_in_log_n(train: pd.DataFrame, test: pd.DataFrame, ycol: str) -> np.ndarray:
    """For each run: a straight line in log N through its fitted steps, extended to its held-out steps."""
    out = np.full(len(test), np.nan)
    for run_id, g in train.groupby("run_id"):
        if g["step"].nunique() < 2:
            continue
        (a, b), _ = ols(np.column_stack([np.ones(len(g)), np.log(g["step"].to_numpy(float))]), g[ycol].to_numpy(float))
        m = (test["run_id"] == run_id).to_numpy()
        out[m] = a + b * np.log(test.loc[m, "step"].to_numpy(float))
    return out
