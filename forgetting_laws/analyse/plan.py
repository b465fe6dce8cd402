r"""Plan a fine-tune before paying for it: predicted forgetting for any rank and steps, from a pilot.

From a pilot sweep's runs, :func:`plan` fits the fine-tuning loss and the forgetting loss as
shifted power laws in the fine-tuned parameters P and the update steps N (Kalajdzievski 2024,
eqs. 5-6: ``kalajdzievski_ft`` and ``kalajdzievski_forget``), then predicts, over a grid of ranks
and steps, each candidate's

- fine-tuning loss :math:`L_{ft}(P, N)` and forgetting loss :math:`L_f(P, N)`, each with a
  prediction interval (it covers a new measurement, not only the mean curve);
- gain :math:`L_{ft}(0) - L_{ft}` and forgetting rise :math:`L_f - L_f(0)` over the base model;
- cost: CPU seconds from the pilot's own measured seconds per step (linear in P, as the FLOPs
  are), and whatever else the caller's ``cost`` adds (GPU-hours on named GPUs);
- distance from the measured region, in decades of P and of N beyond the pilot's ranges.

The Pareto front trades gain against forgetting; for a target (an L_ft to reach, a steps or
seconds budget, a forgetting ceiling) :class:`Plan` names the recommended setting and its
predicted outcome. A candidate more than ``max_extrapolation`` decades outside the measured
region is never recommended; one outside it at all is flagged. Nothing here imports torch;
:mod:`forgetting_laws.measure.verify` runs a recommendation and checks it against its intervals.

Example
-------
>>> p = plan(load_runs("runs/pilot"), ranks=[1, 4, 16, 64], steps=[60, 120, 240], target_ft=3.3)  # doctest: +SKIP
>>> p.recommended, print(p.report())                                                          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import FitDataError
from .fit import fit
from .policy import DEFAULT_POLICY, AnalysisPolicy
from .result import FitResult

__all__ = ["plan", "Plan", "PlanError", "PN", "pareto_front"]

PN = {"P": "trainable_params", "N": "step"}


class PlanError(FitDataError):
    """A target the pilot's laws cannot reach, or cannot support, with the closest candidate."""


@dataclass
class Plan:
    """What :func:`plan` returns.

    Attributes
    ----------
    candidates : DataFrame
        One row per (rank, steps): ``P``, ``ft_loss`` with ``ft_lo``/``ft_hi``, ``forget_loss``
        with ``forget_lo``/``forget_hi`` (prediction intervals at ``level``), ``gain``,
        ``forgetting`` (rise over the base), ``cpu_s``, any ``cost`` columns, ``dP``/``dN``
        (decades beyond the measured range), ``extrapolated`` and ``supported``.
    front : DataFrame
        The supported candidates no other beats on both gain and forgetting.
    recommended : Series or None
        The candidate chosen for the target (None when no target was given).
    target : dict
        The target as given (``target_ft``, ``max_forgetting``, ``max_steps``, ``max_cpu_s``).
    fits : dict
        ``"ft"`` and ``"forget"``: the fitted :class:`FitResult` s the predictions come from.
    base : dict
        The base model's ``ft_loss`` and ``forget_loss`` (the pilot's step-0 rows).
    measured : dict
        The pilot's ranges: ``P`` and ``N`` (min, max), and its ranks.
    """

    candidates: pd.DataFrame
    front: pd.DataFrame
    recommended: pd.Series | None
    target: dict[str, Any]
    fits: dict[str, FitResult]
    base: dict[str, float]
    measured: dict[str, Any]
    level: float = 0.95
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        """The recommendation, its prediction and where it stands against the measured region."""
        lines = [f"pilot: ranks {self.measured['ranks']}, P {self.measured['P'][0]:.3g}-{self.measured['P'][1]:.3g}, "
                 f"N {self.measured['N'][0]}-{self.measured['N'][1]}; base L_ft {self.base['ft_loss']:.4f}, "
                 f"L_f {self.base['forget_loss']:.4f}; {self.level:.0%} prediction intervals"]
        cols = ["rank", "steps", "ft_loss", "ft_lo", "ft_hi", "forget_loss", "forget_lo", "forget_hi", "gain",
                "forgetting", "cpu_s", *self._cost_columns(), "dP", "dN"]
        lines += ["Pareto front (gain against forgetting):", self.front[cols].to_string(index=False, float_format="%.4g")]
        if self.recommended is not None:
            r = self.recommended
            where = ("inside the measured region" if not r["extrapolated"] else
                     f"EXTRAPOLATED {r['dP']:.2f} decades beyond the measured P and {r['dN']:.2f} beyond the measured N")
            lines.append(f"recommended for {self._target_words()}: rank {int(r['rank'])}, {int(r['steps'])} steps "
                         f"(P = {r['P']:.3g}): L_ft {r['ft_loss']:.4f} [{r['ft_lo']:.4f}, {r['ft_hi']:.4f}], "
                         f"L_f {r['forget_loss']:.4f} [{r['forget_lo']:.4f}, {r['forget_hi']:.4f}], "
                         f"forgetting +{r['forgetting']:.4f}; about {r['cpu_s'] / 60:.1f} CPU-minutes; {where}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def __str__(self) -> str:
        return self.report()

    def _cost_columns(self) -> list[str]:
        fixed = {"rank", "steps", "P", "ft_loss", "ft_lo", "ft_hi", "forget_loss", "forget_lo", "forget_hi", "gain",
                 "forgetting", "cpu_s", "dP", "dN", "extrapolated", "supported"}
        return [c for c in self.candidates.columns if c not in fixed]

    def _target_words(self) -> str:
        words = {"target_ft": "L_ft <= {:.4g}", "max_forgetting": "forgetting rise <= {:.4g}",
                 "max_steps": "steps <= {:g}", "max_cpu_s": "CPU seconds <= {:g}"}
        return ", ".join(words[k].format(v) for k, v in self.target.items() if v is not None) or "no target"

    def plot(self, axes=None):
        """The front (gain against forgetting) and the recommendation on the (P, N) map."""
        from .plots import plan_figure

        return plan_figure(self, axes=axes)


def pareto_front(table: pd.DataFrame, gain: str = "gain", cost: str = "forgetting") -> pd.DataFrame:
    """Rows of ``table`` that no other row beats on both (higher ``gain``, lower ``cost``)."""
    rows = table.sort_values([cost, gain], ascending=[True, False])
    best, keep = -np.inf, []
    for i, g in zip(rows.index, rows[gain]):
        if g > best:
            keep.append(i)
            best = g
    return table.loc[keep].sort_values(cost)


def _decades(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """How many decades ``x`` lies outside [lo, hi] (0 inside)."""
    return np.maximum(0.0, np.maximum(np.log10(x / hi), np.log10(lo / x)))


def _seconds_per_step(df: pd.DataFrame, P: np.ndarray) -> np.ndarray:
    """Seconds per update at P, from the pilot's measured wall clock (probes included), linear in P."""
    per_run = []
    for _, run in df.groupby("run_id"):
        run = run.sort_values("step")
        if run.step.iloc[-1] > 0 and np.isfinite(run.wall_s.iloc[-1]):
            per_run.append((float(run.trainable_params.iloc[0]), float(run.wall_s.iloc[-1]) / run.step.iloc[-1]))
    if not per_run:
        return np.full(P.shape, np.nan)
    xs, ys = np.array(per_run).T
    if np.ptp(xs) == 0:
        return np.full(P.shape, ys.mean())
    slope, intercept = np.polyfit(xs, ys, 1)
    return intercept + max(slope, 0.0) * P


def _fits(df: pd.DataFrame, policy: AnalysisPolicy) -> dict[str, FitResult]:
    return {"ft": fit(df, "kalajdzievski_ft", x=PN, y="ft_loss", policy=policy),
            "forget": fit(df, "kalajdzievski_forget", x=PN, y="forget_loss", policy=policy)}


def _candidates(df: pd.DataFrame, fits: dict[str, FitResult], ranks: Sequence[int], steps: Sequence[int],
                level: float, max_extrapolation: float, cost: Callable | None) -> tuple[pd.DataFrame, dict]:
    per_rank = (df.trainable_params / df["rank"]).unique()
    if np.ptp(per_rank) > 1e-6 * per_rank.max():
        raise PlanError(f"P is not proportional to the rank in these runs ({sorted(per_rank)[:3]} per rank): the "
                        "pilot mixes models or LoRA targets; plan from one model and one target set")
    grid = pd.DataFrame([(int(r), int(n)) for r in ranks for n in steps], columns=["rank", "steps"])
    grid["P"] = grid["rank"] * float(per_rank[0])
    P, N = grid.P.to_numpy(float), grid.steps.to_numpy(float)
    for key, col in (("ft", "ft"), ("forget", "forget")):
        res = fits[key]
        grid[f"{col}_loss" if col == "ft" else "forget_loss"] = np.ravel(res.predict(P=P, N=N))
        try:
            lo, hi = res.prediction_interval(level, P=P, N=N)
        except FitDataError as exc:
            raise PlanError(f"the {res.law_name} fit to the pilot gives no prediction interval ({exc}); a plan "
                            "needs one. Leave out Adam's early transient, whose rows follow the law least and "
                            "correlate most within a run (--min-step 8, as the paper leaves out its first steps), "
                            "or add runs to the pilot") from None
        grid[f"{col}_lo"], grid[f"{col}_hi"] = np.ravel(lo), np.ravel(hi)
    fitted = df[df.step >= max(1, fits['forget'].policy.min_step)]  # the rows the laws were fitted to
    measured = {"P": (float(fitted.trainable_params.min()), float(fitted.trainable_params.max())),
                "N": (int(fitted.step.min()), int(fitted.step.max())), "ranks": sorted(int(r) for r in df["rank"].unique())}
    grid["dP"] = _decades(P, *measured["P"])
    grid["dN"] = _decades(N, *measured["N"])
    grid["extrapolated"] = (grid.dP > 0) | (grid.dN > 0)
    grid["supported"] = (grid.dP <= max_extrapolation) & (grid.dN <= max_extrapolation)
    grid["cpu_s"] = _seconds_per_step(df, P) * N
    if cost is not None:
        extra = pd.DataFrame([cost(int(r), int(n)) for r, n in zip(grid["rank"], grid.steps)])
        grid = pd.concat([grid, extra], axis=1)
    return grid, measured


def _choose(table: pd.DataFrame, target: dict[str, Any]) -> pd.Series:
    """The candidate that meets ``target`` with the least predicted forgetting (then least compute)."""
    ok = table[table.supported]
    why = []
    if target.get("max_steps") is not None:
        ok = ok[ok.steps <= target["max_steps"]]
        why.append(f"steps <= {target['max_steps']}")
    if target.get("max_cpu_s") is not None:
        ok = ok[ok.cpu_s <= target["max_cpu_s"]]
        why.append(f"CPU seconds <= {target['max_cpu_s']:g}")
    if target.get("max_forgetting") is not None:
        ok = ok[ok.forgetting_hi <= target["max_forgetting"]]
        why.append(f"forgetting rise <= {target['max_forgetting']:g} at the upper end of its interval")
    if target.get("target_ft") is not None:
        reach = ok[ok.ft_loss <= target["target_ft"]]
        if reach.empty:
            best = (ok if not ok.empty else table[table.supported]).sort_values("ft_loss").head(1)
            closest = (f"; the lowest predicted L_ft that is supported is {best.ft_loss.iloc[0]:.4f} (rank "
                       f"{int(best['rank'].iloc[0])}, {int(best.steps.iloc[0])} steps)" if not best.empty else "")
            raise PlanError(f"target L_ft <= {target['target_ft']:g} is out of reach of the candidates within the "
                            f"pilot's support{' with ' + ', '.join(why) if why else ''}{closest}: add larger ranks "
                            "or more steps to the candidates (at most max_extrapolation decades beyond the pilot), "
                            "or run a pilot closer to the target")
        return reach.sort_values(["forget_loss", "cpu_s"]).iloc[0]
    if ok.empty:
        raise PlanError(f"no supported candidate meets {', '.join(why)}; relax the target or widen the candidates")
    return ok.sort_values(["gain", "forget_loss"], ascending=[False, True]).iloc[0]  # most gain within the limits


def plan(df: pd.DataFrame, ranks: Sequence[int] | None = None, steps: Sequence[int] | None = None,
         target_ft: float | None = None, max_forgetting: float | None = None, max_steps: int | None = None,
         max_cpu_s: float | None = None, level: float | None = None, max_extrapolation: float = 1.0,
         policy: AnalysisPolicy | None = None, cost: Callable[[int, int], dict] | None = None,
         fits: dict[str, FitResult] | None = None) -> Plan:
    """Predict, over ranks x steps, what fine-tuning gains and forgets; recommend for a target.

    Parameters
    ----------
    df : DataFrame
        A pilot sweep's runs (:func:`forgetting_laws.load_runs`), one method and model.
    ranks, steps : sequences of int, optional
        The candidates. Default: the pilot's ranks and 4x its largest, by powers of 2; its
        step counts and 2x and 4x its longest.
    target_ft : float, optional
        The fine-tuning loss to reach: the recommendation is the candidate predicted to reach
        it with the least forgetting.
    max_forgetting : float, optional
        A ceiling on the forgetting rise L_f - L_f(0), at the upper end of its interval.
    max_steps, max_cpu_s : optional
        Budgets of update steps and of CPU seconds (from the pilot's measured step times).
    level : float, optional
        Level of the prediction intervals (default: the policy's).
    max_extrapolation : float
        Candidates more than this many decades beyond the pilot's P or N range are never
        recommended (and are marked unsupported).
    policy : AnalysisPolicy, optional
        How the laws are fitted (default: :data:`~forgetting_laws.analyse.policy.DEFAULT_POLICY`).
    cost : callable, optional
        ``cost(rank, steps) -> {column: value}``: more cost columns (GPU-hours on named GPUs).
    fits : dict, optional
        ``{"ft": ..., "forget": ...}`` fits to use instead of fitting the pilot.

    Returns
    -------
    Plan

    Raises
    ------
    PlanError
        When no supported candidate meets the target (the message names the closest one).
    """
    if df.empty or df["method"].nunique() != 1 or df["model"].nunique() != 1:
        raise PlanError("plan needs the runs of one pilot sweep: one method and one model (got "
                        f"methods {sorted(df['method'].unique())}, models {sorted(df['model'].unique())})")
    policy = policy or DEFAULT_POLICY
    level = policy.ci_level if level is None else level
    fits = fits or _fits(df, policy)
    top_rank, top_step = int(df["rank"].max()), int(df.step.max())
    ranks = sorted(set(ranks or [*df["rank"].unique(), *(top_rank * 2 ** k for k in (1, 2))]))
    steps = sorted(set(steps or [*(s for s in df.step.unique() if s > 0)][-3:] + [2 * top_step, 4 * top_step]))
    table, measured = _candidates(df, fits, ranks, steps, level, max_extrapolation, cost)
    base = {c: float(df.loc[df.step == 0, c].mean()) for c in ("ft_loss", "forget_loss")}
    table["gain"] = base["ft_loss"] - table.ft_loss
    table["forgetting"] = table.forget_loss - base["forget_loss"]
    table["forgetting_hi"] = table.forget_hi - base["forget_loss"]
    target = {"target_ft": target_ft, "max_forgetting": max_forgetting, "max_steps": max_steps,
              "max_cpu_s": max_cpu_s}
    chosen = _choose(table, target) if any(v is not None for v in target.values()) else None
    notes = []
    if chosen is not None and chosen["extrapolated"]:
        notes.append(f"the recommendation lies outside the measured region ({chosen['dP']:.2f} decades in P, "
                     f"{chosen['dN']:.2f} in N): verify it (forgetting-laws plan --verify) before relying on it")
    front = pareto_front(table[table.supported])
    return Plan(table.drop(columns="forgetting_hi"), front.drop(columns="forgetting_hi"),
                None if chosen is None else chosen.drop("forgetting_hi"), {k: v for k, v in target.items()},
                fits, base, measured, level, notes)

