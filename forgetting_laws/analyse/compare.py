r"""Compare fine-tuning methods on one sweep: forgetting at matched fine-tuning loss.

A method that forgets less *because it learns less* is no mitigation, so methods are compared
at equal fine-tuning loss: each run's trajectory is interpolated at common :math:`L_{ft}`
levels (where the run first reaches the level), and the forgetting there is averaged over the
method's runs with a bootstrap CI over runs. Also, per method, the inverse-linear law
:math:`L_f = s - c\,L_{ft}` with bootstrap CIs, and the compute each method spent. A method run
with several settings (two SAM rho) is one arm per setting (:func:`.arms.arm_labels`). The paired,
seed-matched differences against plain LoRA are :func:`forgetting_laws.analyse.paired.paired`.
Nothing here imports torch.

Example
-------
>>> cmp = compare(load_runs("runs/mitigation"))             # doctest: +SKIP
>>> print(cmp.report())                                     # doctest: +SKIP
>>> cmp.plot().figure.savefig("methods.png")                # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import FitDataError
from .arms import arm_labels
from .fit import fit
from .policy import DEFAULT_POLICY, AnalysisPolicy
from .result import FitResult

__all__ = ["compare", "Comparison", "forget_at", "matched_levels"]


@dataclass
class Comparison:
    """What :func:`compare` returns.

    Attributes
    ----------
    matched : DataFrame
        One row per (method, ft_loss level): ``forget_loss`` (mean over runs), ``lo``, ``hi``
        (interval of the mean: bootstrap over runs with enough runs, else Student t; ``interval``
        says which), ``n_runs`` (runs that reached the level).
    laws : DataFrame
        One row per method: ``s``, ``c`` and their interval bounds, ``r2``, ``n_runs``, the
        interval method (NaN when the fit was not possible; see ``notes``).
    compute : DataFrame
        One row per method: runs, final steps, tokens and wall seconds (summed over runs) and
        wall seconds per step.
    fits : dict
        Method -> :class:`~forgetting_laws.analyse.fit.FitResult`.
    """

    matched: pd.DataFrame
    laws: pd.DataFrame
    compute: pd.DataFrame
    fits: dict[str, FitResult] = field(default_factory=dict)
    ci_level: float = 0.95
    notes: list[str] = field(default_factory=list)
    runs: pd.DataFrame | None = None

    def report(self) -> str:
        """A plain-text summary of the three tables."""
        pct = f"{self.ci_level:.0%}"
        parts = [f"forgetting at matched fine-tuning loss (mean over runs; {pct} interval of the mean, "
                 "column interval: bootstrap over runs, or Student t with too few runs for a bootstrap):",
                 self.matched.to_string(index=False, float_format="%.4f"),
                 f"\ninverse-linear law L_f = s - c L_ft per method ({pct} intervals):",
                 self.laws.to_string(index=False, float_format="%.4f"),
                 "\ncompute per method:", self.compute.to_string(index=False, float_format="%.4g")]
        return "\n".join(parts + [f"note: {n}" for n in self.notes])

    def __str__(self) -> str:
        return self.report()

    def plot(self, ax: Any = None) -> Any:
        """L_f against L_ft, one colour per method (see :func:`forgetting_laws.analyse.plots.method_comparison`)."""
        from .plots import method_comparison

        return method_comparison(self, ax=ax)


def forget_at(run: pd.DataFrame, levels: Sequence[float], x: str = "ft_loss", y: str = "forget_loss") -> np.ndarray:
    """``y`` where the run's ``x`` first falls to each level, linearly interpolated between probes.

    ``run`` is one run's rows; levels it never reaches (or starts below) give NaN.
    """
    r = run.sort_values("step")
    xs, ys = r[x].to_numpy(float), r[y].to_numpy(float)
    out = np.full(len(levels), np.nan)
    for k, level in enumerate(levels):
        below = np.flatnonzero(xs <= level)
        if below.size == 0 or below[0] == 0:
            continue
        i = below[0]  # first probe at or below the level; the previous one is above it
        t = (xs[i - 1] - level) / (xs[i - 1] - xs[i])
        out[k] = ys[i - 1] + t * (ys[i] - ys[i - 1])
    return out


def matched_levels(df: pd.DataFrame, n: int = 8) -> np.ndarray:
    """``n`` ft_loss levels every run crosses: from the highest final-best loss up to the start."""
    per_run = df.groupby("run_id")["ft_loss"]
    lo, hi = per_run.min().max(), df.sort_values("step").groupby("run_id")["ft_loss"].first().min()
    if not lo < hi:
        raise FitDataError(f"no ft_loss level is reached by every run (best losses up to {lo:.4g}, "
                           f"starting losses down to {hi:.4g}); pass levels= explicitly")
    return np.linspace(lo, hi, n + 1)[:-1]


def _mean_interval(values: np.ndarray, policy: AnalysisPolicy, rng: np.random.Generator) -> tuple[float, float, str]:
    """Interval for the mean over runs: bootstrap percentiles with at least ``policy.min_clusters``
    runs, a Student-t interval with fewer (2 or more), none below 2."""
    a = (1 - policy.ci_level) / 2
    if values.size >= policy.min_clusters and policy.bootstrap:
        means = rng.choice(values, size=(policy.bootstrap, values.size), replace=True).mean(axis=1)
        return (*np.quantile(means, [a, 1 - a]), "bootstrap")
    if values.size >= 2:
        half = stats.t.ppf(1 - a, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
        return values.mean() - half, values.mean() + half, "t"
    return np.nan, np.nan, "none"


def _matched(df: pd.DataFrame, levels: np.ndarray, policy: AnalysisPolicy) -> pd.DataFrame:
    rng = np.random.default_rng(policy.seed)
    rows = []
    for method, g in df.groupby("method", sort=True):
        at = np.array([forget_at(run, levels) for _, run in g.groupby("run_id")])  # (runs, levels)
        for k, lev in enumerate(levels):
            v = at[:, k][~np.isnan(at[:, k])]
            lo, hi, how = _mean_interval(v, policy, rng)
            rows.append({"method": method, "ft_loss": lev, "forget_loss": v.mean() if v.size else np.nan,
                         "lo": lo, "hi": hi, "interval": how, "n_runs": v.size})
    return pd.DataFrame(rows)


def _laws(df: pd.DataFrame, policy: AnalysisPolicy, notes: list[str]) -> tuple[pd.DataFrame, dict[str, FitResult]]:
    rows, fits = [], {}
    for method, g in df.groupby("method", sort=True):
        row = {"method": method, "n_runs": g.run_id.nunique()}
        try:
            res = fit(g, "inverse_linear", x={"L_ft": "ft_loss"}, y="forget_loss", policy=policy)
        except FitDataError as exc:
            notes.append(f"{method}: no inverse-linear fit ({exc})")
            rows.append({**row, "s": np.nan, "c": np.nan, "r2": np.nan})
            continue
        fits[method] = res
        for p in ("s", "c"):
            row.update({p: res.params[p], f"{p}_lo": res.ci[p][0], f"{p}_hi": res.ci[p][1]})
        rows.append({**row, "r2": res.metrics.get("r2", np.nan), "intervals": res.interval_method})
    return pd.DataFrame(rows), fits


def _compute(df: pd.DataFrame) -> pd.DataFrame:
    last = df.sort_values("step").groupby("run_id").tail(1)
    out = last.groupby("method", sort=True).agg(runs=("run_id", "nunique"), steps=("step", "sum"),
                                                tokens=("tokens_seen", "sum"), wall_s=("wall_s", "sum"))
    out["wall_s_per_step"] = out.wall_s / out.steps.clip(lower=1)
    return out.reset_index()


def compare(df: pd.DataFrame, policy: AnalysisPolicy | None = None, levels: Sequence[float] | None = None,
            n_levels: int = 8, **overrides: Any) -> Comparison:
    """Compare the methods of a runs table (one ``method`` value per method).

    Parameters
    ----------
    df : DataFrame
        Runs as :func:`forgetting_laws.load_runs` returns them.
    policy : AnalysisPolicy, optional
        The analysis policy (default :data:`~forgetting_laws.analyse.policy.DEFAULT_POLICY`;
        ``overrides``: its fields): ``bootstrap`` resamples of the runs for the
        matched-forgetting intervals (and the law fits' bootstrap), ``min_step`` (probes before
        it are left out of the law fits; the trajectories keep them), ``seed``, ``ci_level``.
    levels : sequence of float, optional
        ft_loss levels to match at; default :func:`matched_levels` with ``n_levels``.

    Returns
    -------
    Comparison
    """
    policy = (policy or DEFAULT_POLICY).updated(**overrides)
    if "method" not in df or df.empty:
        raise FitDataError("compare needs a runs table with a 'method' column and at least one row")
    df = df.assign(method=arm_labels(df))  # one arm per method and settings
    levels = matched_levels(df, n_levels) if levels is None else np.asarray(levels, float)
    notes: list[str] = []
    laws, fits = _laws(df, policy, notes)
    return Comparison(_matched(df, levels, policy), laws, _compute(df), fits, policy.ci_level, notes, runs=df)
