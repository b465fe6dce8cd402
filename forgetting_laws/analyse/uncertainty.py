r"""Uncertainty of a fit: the residual noise model, parameter intervals, bands and prediction intervals.

Two things are uncertain, and they are kept apart:

* **the law's mean curve**, because its parameters are estimated. Its
  *confidence band* is the spread of the fitted curve: bootstrap percentiles of
  the refitted curves, or the delta method :math:`\operatorname{Var} g(f(x;\hat\theta))
  \approx j(x)^\top \Sigma_u\, j(x)` with :math:`\Sigma_u` the parameters' covariance on
  the optimiser's scale and :math:`g` the objective's scale (log or identity);
* **a new measurement** scatters around that curve. Its *prediction interval*
  adds the residual noise to the band, on the objective's scale:

  .. math:: g \pm \sqrt{h_{band}^2 + \left(t_{\nu}\,\hat\sigma\right)^2}

  where :math:`h_{band}` is the band's half-width on that side.

Rows of one run are correlated (a run's trajectory wanders smoothly around the law), so a run
is worth fewer than its rows. The noise model measures this from the residuals: :math:`\rho`,
the correlation of neighbouring residuals of a run (not centred, so a run-level offset counts),
gives Kish's design effect :math:`D = 1 + (\bar m - 1)\max(\rho, 0)` for runs of
:math:`\bar m` rows (capped at :math:`\bar m`). Then

.. math:: n_{eff} = n / D, \quad \nu = n_{eff} - p, \quad
          \hat\sigma^2 = \frac{\sum r_i^2}{n - p\,D},

the last being unbiased when runs carry random offsets and the law's parameters act on whole
runs: :math:`E\sum r_i^2 = \sigma^2 (n - p D)`. With too few effective observations
(:math:`\nu < 1`) there is no honest noise scale, and no prediction interval.

Parameter intervals: with at least ``min_clusters`` runs, percentiles of a bootstrap that
resamples whole runs; below that, asymptotic intervals from the M-estimator covariance
:math:`A^{-1} B A^{-1}` (for least squares :math:`\hat\sigma^2 D (J^\top J)^{-1}`), with
Student-t quantiles of :math:`\nu` degrees of freedom, flagged as such.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from ..errors import FitDataError
from .engine import InputScaling, Problem
from .laws import Law

__all__ = ["NoiseModel", "Intervals", "noise_model", "bootstrap_intervals", "asymptotic_intervals",
           "no_intervals", "unidentified", "mean_band", "prediction_band"]


@dataclass(frozen=True)
class NoiseModel:
    """Scatter of measurements around the law, per output, on the objective's scale.

    Attributes
    ----------
    sigma : tuple of float
        Residual standard deviation of each output (on log y for the log objectives).
    dof : float
        Effective degrees of freedom of ``sigma``: :math:`n_{eff} - p`.
    design_effect, autocorrelation : tuple of float
        :math:`D` and :math:`\\rho` of each output (see the module docstring).
    n_effective : float
        :math:`\\sum_k n / D_k`, the independent observations the rows are worth.
    n_clusters : int
        Runs (groups) the rows come from.
    scale : str
        ``"log y"`` or ``"y"``.
    """

    sigma: tuple[float, ...]
    dof: float
    design_effect: tuple[float, ...]
    autocorrelation: tuple[float, ...]
    n_effective: float
    n_clusters: int
    scale: str

    def t(self, level: float) -> float:
        """Two-sided Student-t quantile at ``level`` for ``dof`` degrees of freedom."""
        return float(stats.t.ppf(0.5 + level / 2, self.dof))

    def describe(self) -> str:
        sig = ", ".join(f"{s:.3g}" for s in self.sigma)
        rho = ", ".join(f"{r:+.2f}" for r in self.autocorrelation)
        deff = ", ".join(f"{d:.2f}" for d in self.design_effect)
        return (f"residual sd {sig} on {self.scale}; neighbouring rows of a run correlate at {rho}, "
                f"design effect {deff}: the rows count as {self.n_effective:.1f} independent observations "
                f"({self.dof:.1f} degrees of freedom)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NoiseModel:
        return cls(**{**d, **{k: tuple(d[k]) for k in ("sigma", "design_effect", "autocorrelation")}})


def neighbour_correlation(r: np.ndarray, groups: np.ndarray) -> float:
    """Correlation of consecutive residuals of one group (rows in measurement order), not centred."""
    order = np.argsort(groups, kind="stable")  # each group's rows together, in their own order
    rs, gs = r[order], groups[order]
    same = gs[:-1] == gs[1:]
    a, b = rs[:-1][same], rs[1:][same]
    den = 0.5 * float(a @ a + b @ b)
    return float(a @ b) / den if den > 0 else 0.0


def noise_model(resid: np.ndarray, groups: np.ndarray, n_outputs: int, n_free: int,
                scale: str) -> NoiseModel | str:
    """The noise model of residuals ``resid`` (m,) on the objective's scale, or the reason there is none.

    ``groups`` (n,) labels each row's run, rows of a run in measurement order.
    """
    per_output = np.split(np.asarray(resid, dtype=float), n_outputs)
    n, n_groups = per_output[0].size, np.unique(groups).size
    m_bar = n / n_groups
    rho = [neighbour_correlation(r, groups) for r in per_output]
    deff = [float(np.clip(1 + (m_bar - 1) * max(c, 0.0), 1.0, m_bar)) for c in rho]
    p_k = n_free / n_outputs  # parameters per output, for the joint laws' shared budget
    n_eff = sum(n / d for d in deff)
    dof = n_eff - n_free
    denominators = [n - p_k * d for d in deff]
    if dof < 1 or min(denominators) <= 0:
        return (f"the {n_groups} runs' {n * n_outputs} rows count as about {n_eff:.1f} independent observations "
                f"(neighbouring rows of a run correlate at {max(rho):+.2f}), too few to estimate the noise "
                f"besides {n_free} free parameters")
    sigma = tuple(math.sqrt(float(r @ r) / den) for r, den in zip(per_output, denominators))
    return NoiseModel(sigma, float(dof), tuple(deff), tuple(rho), float(n_eff), int(n_groups), scale)


# ---------------------------------------------------------------- parameter intervals


@dataclass
class Intervals:
    """Parameter uncertainty of a fit.

    ``method`` is ``"cluster bootstrap"``, ``"asymptotic"`` or ``"none"``; ``note`` says what the
    intervals rest on (or why there are none). ``covariance`` is on the optimiser's scale (log for
    positive scale parameters); ``flat`` marks parameters along a flat direction of the objective;
    ``draws`` holds the bootstrap parameter draws (B, p), empty for the other methods.
    """

    method: str
    note: str
    stderr: dict[str, float]
    ci: dict[str, tuple[float, float]]
    correlation: np.ndarray
    covariance: np.ndarray
    flat: np.ndarray
    draws: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


def bootstrap_intervals(names: tuple[str, ...], is_log: np.ndarray, draws: np.ndarray, level: float,
                        note: str) -> Intervals:
    """Percentile intervals, standard deviations and correlations of bootstrap ``draws`` (B, p)."""
    q = 100 * (1 - level) / 2
    du = np.where(is_log, np.log(np.maximum(draws, 1e-300)), draws)
    cov = np.cov(du, rowvar=False) if draws.shape[0] > 1 else np.full((len(names),) * 2, np.nan)
    with np.errstate(over="ignore", invalid="ignore"):  # an unidentified parameter may wander off
        stderr = dict(zip(names, map(float, draws.std(axis=0, ddof=1))))
    lo, hi = np.percentile(draws, q, axis=0), np.percentile(draws, 100 - q, axis=0)
    ci = {p: (float(a), float(b)) for p, a, b in zip(names, lo, hi)}
    return Intervals("cluster bootstrap", note, stderr, ci, _correlation(np.atleast_2d(cov)), np.atleast_2d(cov),
                     np.zeros(len(names), dtype=bool), draws)


def asymptotic_intervals(prob: Problem, theta_e: np.ndarray, scaling: InputScaling, noise: NoiseModel,
                         level: float, note: str) -> Intervals:
    """Student-t intervals from the M-estimator covariance at the engine optimum ``theta_e``,
    mapped to the user's parameters; parameters along flat directions get infinite intervals."""
    cov_e, flat_e = _m_estimator_covariance(prob, theta_e, noise)
    M = _map_jacobian(prob, scaling, theta_e)
    cov = M @ cov_e @ M.T
    flat = (np.abs(M) @ flat_e.astype(float)) > 0
    theta = scaling.to_user(theta_e)
    u = prob.to_u(theta)
    sd_u = np.where(flat, np.inf, np.sqrt(np.clip(np.diag(cov), 0, None)))
    half = noise.t(level) * sd_u
    with np.errstate(invalid="ignore", over="ignore"):
        lo = np.clip(prob.to_theta(u - half), prob.lo, prob.hi)
        hi = np.clip(prob.to_theta(u + half), prob.lo, prob.hi)
        stderr = sd_u * np.where(prob.is_log, theta, 1.0)  # delta method: d theta / d u
    names = prob.law.params
    ci = {p: (float(a), float(b)) for p, a, b in zip(names, lo, hi)}
    return Intervals("asymptotic", note, dict(zip(names, map(float, stderr))), ci, _correlation(cov), cov, flat)


def no_intervals(names: tuple[str, ...], reason: str) -> Intervals:
    p = len(names)
    nan = float("nan")
    return Intervals("none", reason, dict.fromkeys(names, nan), {n: (nan, nan) for n in names},
                     np.full((p, p), np.nan), np.full((p, p), np.nan), np.ones(p, dtype=bool))


def _m_estimator_covariance(prob: Problem, theta: np.ndarray, noise: NoiseModel) -> tuple[np.ndarray, np.ndarray]:
    """:math:`A^{-1} B A^{-1}` on the optimiser's scale: A = sum_i psi'_k J_i J_i^T, B = sum_i
    s_k^2 D_k J_i J_i^T per output k (Huber's psi; for least squares A = J^T J, B = sigma^2 D J^T J).
    Also the parameters along (numerically) flat directions of A."""
    p, K = theta.size, prob.law.n_outputs
    free = ~prob.gauge
    J = prob.resid_jac(theta)[free]  # (q, m)
    r = np.split(prob.residuals(prob.evaluate_one(theta)), K)
    slope, spread = np.empty(prob.y.size), np.empty(prob.y.size)
    n = prob.y.size // K
    for k, rk in enumerate(r):
        rows = slice(k * n, (k + 1) * n)
        if prob.loss == "huber_log":  # Huber (1981): psi = clip(r, -delta, delta), psi' = 1 inside
            slope[rows] = max(float(np.mean(np.abs(rk) <= prob.delta)), 1.0 / n)
            dof_k = n - prob.n_free / K * noise.design_effect[k]
            spread[rows] = float(np.sum(np.clip(rk, -prob.delta, prob.delta) ** 2)) / dof_k * noise.design_effect[k]
        else:
            slope[rows], spread[rows] = 1.0, noise.sigma[k] ** 2 * noise.design_effect[k]
    A = (J * slope) @ J.T
    B = (J * spread) @ J.T
    Ainv, flat_free = _pinv_flat(A)
    cov = np.zeros((p, p))
    cov[np.ix_(free, free)] = Ainv @ B @ Ainv
    flat = np.zeros(p, dtype=bool)
    flat[free] = flat_free
    return cov, flat


def _pinv_flat(A: np.ndarray, rcond: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-inverse of a symmetric ``A`` and the coordinates that take part in its null space."""
    d = np.sqrt(np.clip(np.diag(A), 0, None))
    scale = np.where(d > 0, 1 / np.where(d > 0, d, 1), 0.0)
    w, V = np.linalg.eigh(A * np.outer(scale, scale))
    keep = w > rcond * max(w.max(), 1e-300)
    inv = (V[:, keep] / w[keep]) @ V[:, keep].T * np.outer(scale, scale)
    flat = (d == 0) | (np.abs(V[:, ~keep]) > 0.1).any(axis=1)
    return inv, flat


def _map_jacobian(prob: Problem, scaling: InputScaling, theta_e: np.ndarray) -> np.ndarray:
    """d u_user / d u_engine (p, p) by central differences (identity without input scaling)."""
    p = theta_e.size
    if scaling.identity:
        return np.eye(p)
    u = prob.to_u(theta_e)

    def user_u(v: np.ndarray) -> np.ndarray:
        return prob.to_u(scaling.to_user(prob.to_theta(v)))

    M = np.empty((p, p))
    for j in range(p):
        h = 1e-6 * max(1.0, abs(u[j]))
        up, dn = u.copy(), u.copy()
        up[j] += h
        dn[j] -= h
        M[:, j] = (user_u(up) - user_u(dn)) / (2 * h)
    return M


def _correlation(cov: np.ndarray) -> np.ndarray:
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(sd, sd)
    return np.clip(np.where(np.outer(sd, sd) > 0, corr, np.nan), -1, 1)


def unidentified(law: Law, params: Mapping[str, float], ci: Mapping[str, tuple[float, float]],
                 level: float) -> dict[str, str]:
    """Parameters the data do not pin down, each with the reason.

    Not identified: an interval that is infinite or missing; for a positive scale parameter
    (log scale), one spanning more than 3 decades; for a parameter bounded on both sides, one
    covering 90% of its range; otherwise one wider than 1000 times the estimate.
    """
    out = {}
    for p, (lo, hi) in ci.items():
        if p in law.gauge:
            continue
        blo, bhi = law.bound(p)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            out[p] = f"its {level:.0%} interval is unbounded: the data leave it free"
        elif p in law.log_params and lo > 0 and hi / lo > 1e3:
            out[p] = f"its {level:.0%} interval spans {math.log10(hi / lo):.1f} decades ({lo:.3g} to {hi:.3g})"
        elif p in law.log_params and lo <= 0 < hi:
            out[p] = f"its {level:.0%} interval reaches 0 ({lo:.3g} to {hi:.3g})"
        elif np.isfinite(blo) and np.isfinite(bhi) and hi - lo >= 0.9 * (bhi - blo):
            out[p] = f"its {level:.0%} interval covers its whole range ({lo:.3g} to {hi:.3g} of {blo:g} to {bhi:g})"
        elif p not in law.log_params and hi - lo > 1e3 * abs(params[p]) and not (np.isfinite(blo) and np.isfinite(bhi)):
            out[p] = f"its {level:.0%} interval ({lo:.3g} to {hi:.3g}) is over 1000 times wider than the estimate"
    return out


# ---------------------------------------------------------------- bands


def _predict(law: Law, theta: np.ndarray, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Predictions (B, ...) for parameter sets ``theta`` (B, p)."""
    kw = {p: theta[:, j].reshape((-1,) + (1,) * (1 + (law.n_outputs > 1))) for j, p in enumerate(law.params)}
    shape = np.broadcast(*inputs.values()).shape
    with np.errstate(all="ignore"):
        out = np.asarray(law(**inputs, **kw), dtype=float)
    return out.reshape((theta.shape[0],) + ((law.n_outputs,) if law.n_outputs > 1 else ()) + shape)


def mean_band(law: Law, theta: np.ndarray, inputs: Mapping[str, np.ndarray], level: float, log_scale: bool,
              draws: np.ndarray | None, covariance: np.ndarray | None, dof: float | None) -> tuple[np.ndarray, ...]:
    """Centre and confidence band of the mean curve, on the objective's scale: (centre, lo, hi)."""
    g = _log if log_scale else _identity
    centre = g(_predict(law, theta[None], inputs)[0])
    if draws is not None and draws.shape[0] > 1:
        curves = g(_predict(law, draws, inputs))
        q = 100 * (1 - level) / 2
        lo, hi = np.nanpercentile(curves, q, axis=0), np.nanpercentile(curves, 100 - q, axis=0)
        return centre, np.minimum(lo, centre), np.maximum(hi, centre)
    if covariance is None or dof is None or not np.all(np.isfinite(covariance)):
        raise FitDataError("this fit holds neither bootstrap draws nor a parameter covariance; "
                           "see its interval note for why")
    J = _curve_jacobian(law, theta, inputs, log_scale)  # (p, ...)
    var = np.einsum("i...,ij,j...->...", J, covariance, J)
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * np.sqrt(np.clip(var, 0, None))
    return centre, centre - half, centre + half


def prediction_band(centre: np.ndarray, lo: np.ndarray, hi: np.ndarray, noise: NoiseModel, level: float,
                    n_outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """Widen a band (objective scale) by the residual noise: each side sqrt(half^2 + (t sigma)^2)."""
    sigma = np.asarray(noise.sigma).reshape((-1,) + (1,) * (centre.ndim - 1)) if n_outputs > 1 else noise.sigma[0]
    extra = (noise.t(level) * sigma) ** 2
    return centre - np.sqrt((centre - lo) ** 2 + extra), centre + np.sqrt((hi - centre) ** 2 + extra)


def _curve_jacobian(law: Law, theta: np.ndarray, inputs: Mapping[str, np.ndarray], log_scale: bool) -> np.ndarray:
    """d g(f(x)) / d u at the user's parameters: (p, [n_outputs,] n)."""
    shape = np.broadcast(*inputs.values()).shape
    X = {k: np.broadcast_to(np.asarray(v, dtype=float), shape).ravel() for k, v in inputs.items()}
    size = int(np.prod(shape)) if shape else 1
    prob = Problem(law, X, np.ones(size * law.n_outputs), loss="mse_log" if log_scale else "mse")
    J = prob.resid_jac(theta) if log_scale else prob.jac_u(theta)
    return J.reshape((theta.size,) + ((law.n_outputs,) if law.n_outputs > 1 else ()) + shape)


def _log(a: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a > 0, np.log(np.where(a > 0, a, 1.0)), np.nan)


def _identity(a: np.ndarray) -> np.ndarray:
    return a
