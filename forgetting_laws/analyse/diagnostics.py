"""What a fit's numbers are worth: metrics (per output), likelihoods and the warnings a report shows.

Metrics are computed on the data scale (R^2, RMSE, MAE, ARE), per output for a joint law,
besides the objective and an information criterion from the likelihood the objective implies
(Gaussian, or Huber with a fitted scale). Warnings say what a user must know before reading a
parameter: inputs spanning under a decade, parameters that trade off, parameters the data do
not pin down, an estimate outside its own interval, a fit no better than a constant, and an
optimiser that did not converge.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats
from scipy.optimize import minimize_scalar

from .engine import Problem, Solution

__all__ = ["metrics", "error_metrics", "warnings_for", "constant_objective", "CORR_LIMIT"]

#: |correlation| above which two parameters are reported as trading off.
CORR_LIMIT = 0.99


def error_metrics(obs: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """ARE (mean absolute relative error), MAE, RMSE and R^2 of ``pred`` against ``obs``."""
    err = pred - obs
    ss_tot = float(np.sum((obs - obs.mean()) ** 2))
    return {
        "are": float(np.mean(np.abs(err) / np.abs(obs))),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": 1.0 - float(err @ err) / ss_tot if ss_tot > 0 else float("nan"),
    }


def metrics(prob: Problem, theta: np.ndarray, pred: np.ndarray, objective: float,
            outputs: tuple[str, ...]) -> dict[str, Any]:
    """In-sample metrics; for a joint law the top-level error metrics are those of the output
    with the smallest R^2, each output's in ``outputs``."""
    n, k = prob.y.size, theta.size + 1  # +1: the noise scale
    loglik = _loglik(prob.residuals(pred), prob.loss, prob.delta)
    per_output = {name: error_metrics(o, f) for name, o, f in
                  zip(outputs, np.split(prob.y, len(outputs)), np.split(pred, len(outputs)))}
    worst = min(per_output.values(), key=lambda m: m["r2"] if np.isfinite(m["r2"]) else -np.inf)
    inputs = {i: np.tile(a, prob.law.n_outputs) for i, a in prob.X.items()}
    rank_corr = {i: _spearman(a, prob.y - pred) for i, a in inputs.items()}
    return {
        "n": int(n), "n_params": int(theta.size), "objective": float(objective),
        **worst, "outputs": per_output, "loglik": loglik,
        "aic": 2 * k - 2 * loglik, "bic": k * math.log(n) - 2 * loglik,
        "likelihood": "huber" if prob.loss == "huber_log" else "gaussian",
        "likelihood_scale": "log y" if prob.log_resid else "y",
        "rank_corr": {i: v[0] for i, v in rank_corr.items()},
        "rank_corr_p": {i: v[1] for i, v in rank_corr.items()},
        "constant_objective": constant_objective(prob),
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


def constant_objective(prob: Problem) -> float:
    """The objective of the best constant per output: the trivial law a fit must beat."""
    K = prob.law.n_outputs
    pred = np.concatenate([np.full(y.size, _best_constant(prob, y)) for y in np.split(prob.y, K)])
    return float(prob.objective_values(pred[None])[0])


def _best_constant(prob: Problem, y: np.ndarray) -> float:
    if prob.loss == "mse":
        return float(y.mean())
    ly = np.log(y)
    if prob.loss == "mse_log":
        return float(np.exp(ly.mean()))
    d = prob.delta
    huber = lambda c: float(np.sum(np.where(np.abs(c - ly) <= d, 0.5 * (c - ly) ** 2,  # noqa: E731
                                            d * (np.abs(c - ly) - 0.5 * d))))
    return float(np.exp(minimize_scalar(huber, bounds=(ly.min(), ly.max()), method="bounded").x))


def warnings_for(prob: Problem, res: Any, best: Solution) -> list[str]:
    """The warnings of a fit ``res`` (a FitResult) whose engine optimum is ``best``."""
    return [*_range_warnings(prob), *_tradeoff_warnings(prob, res), *_identification_warnings(res),
            *_interval_position_warnings(res), *_gauge_warnings(prob, res), *_baseline_warnings(res),
            *_convergence_warnings(best)]


def _range_warnings(prob: Problem) -> list[str]:
    out = []
    for i in prob.law.positive_inputs:
        lo, hi = prob.X[i].min(), prob.X[i].max()
        if hi < 10 * lo:
            out.append(f"input {i!r} spans less than a decade (x{hi / lo:.2g}): "
                       f"exponents acting on {i} are weakly identified")
    return out


def _tradeoff_warnings(prob: Problem, res: Any) -> list[str]:
    out, names = [], prob.law.params
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            c = res.correlation[a, b]
            if np.isfinite(c) and abs(c) > CORR_LIMIT:
                out.append(f"parameters {names[a]!r} and {names[b]!r} are correlated (corr = {c:+.4f}): "
                           "the data pin down a combination of them better than each one")
    return out


def _identification_warnings(res: Any) -> list[str]:
    return [f"parameter {p!r} is not identified by these data: {why}" for p, why in res.unidentified.items()]


def _interval_position_warnings(res: Any) -> list[str]:
    """An estimate on the edge of (within 1% of the width from an end) or outside its own interval."""
    out = []
    for p, (lo, hi) in res.ci.items():
        v = res.params[p]
        if p in res.unidentified or not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
            continue
        margin = 0.01 * (hi - lo)
        if not lo + margin < v < hi - margin:
            where = "outside" if not lo <= v <= hi else "on the edge of"
            out.append(f"the estimate of {p!r} ({v:.6g}) lies {where} its {res.ci_level:.0%} interval "
                       f"[{lo:.6g}, {hi:.6g}]: the resampled fits disagree with the full-data fit "
                       "(a bound, another optimum or too few runs); read the interval with care")
    return out


def _gauge_warnings(prob: Problem, res: Any) -> list[str]:
    return [f"parameter {p!r} is held at {res.params[p]:.6g}: law {prob.law.name!r} is invariant under a "
            f"rescaling that {p} can absorb, so it carries no information of its own" for p in prob.law.gauge]


def _baseline_warnings(res: Any) -> list[str]:
    obj, const = res.metrics["objective"], res.metrics.get("constant_objective", float("inf"))
    if np.isfinite(const) and const > 0 and obj >= 0.9 * const:
        return [f"the fit is no better than a constant: objective {obj:.4g} against {const:.4g} for the best "
                "constant; the law does not describe these data, or its start grid misses the optimum "
                "(give grid= with values of the right size)"]
    return []


def _convergence_warnings(best: Solution) -> list[str]:
    if best.converged:
        return []
    return [f"the optimiser did not converge: restarted from its end point, it ran out of steps or still lowered "
            f"the objective (by {best.restart_gain:.3g}); the optimum may lie at infinity along a flat valley of "
            "the objective. Check the parameters marked not identified"]
