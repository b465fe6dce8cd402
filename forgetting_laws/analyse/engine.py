"""Numerical core of the fitter: objectives, input scaling, start grids, refinement, bootstrap.

Shapes: ``n`` data rows, ``m = n_outputs * n`` fitted values (outputs stacked
output-major), ``p`` parameters, ``B`` parameter sets evaluated at once.

Which trick serves which objective:

* ``mse``: variable projection. The parameters that enter linearly are solved
  by (weighted, bound-respecting) least squares inside the residual function,
  so the search runs only over the nonlinear ones, with a bounded trust-region
  Gauss-Newton (``scipy.optimize.least_squares``) and Kaufman's analytic
  variable-projection Jacobian. Starts that differ only in linear parameters
  are one start.
* ``mse_log``: the log residual is not linear in any parameter; the same
  trust-region method runs over all parameters (positive ones in log space)
  with the law's analytic Jacobian.
* ``huber_log``: not a sum of squares, but a robust loss of the log residuals:
  the same trust-region method with a weighted Huber loss (scipy's robust-loss
  scaling of the Jacobian), over all parameters, multiplicative ones in log
  space (``chinchilla``: ``a = log A, b = log B``; the additive ``E`` as it is, so
  it can rest on its bound 0). Linear parameters missing from the start grid are
  initialised by weighted least squares. (L-BFGS-B, Chinchilla's optimiser,
  stalls where most residuals sit in Huber's linear part: on the demo's
  inverse-linear fit from step 8 it stopped 0.9% above the optimum.)

Scale-free: a law that says how a rescaling of its inputs maps its parameters
(``Law.rescale``) is fitted on inputs divided by their geometric mean
(:class:`InputScaling`), so FLOPs or units of 1e16 give the same optimum.

Laws without an analytic gradient get batched central differences. Gauge
parameters (a symmetry makes them redundant) are held at their start value.
In every case the whole start grid is scored in one vectorised pass (linear
parameters solved per start for ``mse``), the best starts are refined in turn
until three of them agree, and the best optima are restarted from their end
points; the best one counts as converged when a restart no longer lowers the
objective.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.optimize import least_squares, lsq_linear, nnls
from threadpoolctl import threadpool_limits

from .laws import Law
from .policy import LOSSES

__all__ = ["LOSSES", "Problem", "InputScaling", "Solution", "Budget", "multistart", "refine", "polish",
           "bootstrap", "group_weights", "distinct", "grid_starts", "score_starts", "weighted_huber"]

_BIG = 1e30
_LOG_LIMIT = 650.0  # |log| of a log-scale parameter in the engine: rescaled to the user's units it stays finite
_CHUNK = 4_000_000  # max floats per batched evaluation
#: A restart that lowers the objective by less than this (relative) changes nothing a fit reports.
CONVERGED_RTOL = 1e-6


@dataclass
class Problem:
    """A law, its data and an objective. ``w`` holds per-value weights (bootstrap counts)."""

    law: Law
    X: Mapping[str, np.ndarray]  # input -> (n,)
    y: np.ndarray  # (m,)
    loss: str = "huber_log"
    delta: float = 1e-3
    w: np.ndarray | None = None  # (m,)
    is_log: np.ndarray = field(init=False)
    ulo: np.ndarray = field(init=False)
    uhi: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        law = self.law
        self.w = np.ones_like(self.y) if self.w is None else self.w
        self.is_log = np.array([p in law.log_params for p in law.params], dtype=bool)
        self.lo = np.array([law.bound(p)[0] for p in law.params])
        self.hi = np.array([law.bound(p)[1] for p in law.params])
        with np.errstate(divide="ignore"):  # log parameters stay within 1e-282..1e282: finite in any units
            self.ulo = np.where(self.is_log, np.maximum(np.log(np.maximum(self.lo, 0.0)), -_LOG_LIMIT), self.lo)
            self.uhi = np.where(self.is_log, np.minimum(np.log(self.hi), _LOG_LIMIT), self.hi)
        self.lin = np.array([p in law.linear for p in law.params], dtype=bool)
        self.gauge = np.array([p in law.gauge for p in law.params], dtype=bool)
        self._log_idx = np.flatnonzero(self.is_log)
        with np.errstate(divide="ignore", invalid="ignore"):
            self._log_y = np.log(self.y)

    @property
    def uses_varpro(self) -> bool:
        return self.loss == "mse" and bool(self.lin.any())

    @property
    def log_resid(self) -> bool:
        return self.loss in ("huber_log", "mse_log")

    @property
    def n_free(self) -> int:
        """Parameters the optimiser moves (gauge parameters are held)."""
        return int((~self.gauge).sum())

    def with_weights(self, w: np.ndarray) -> Problem:
        return Problem(self.law, self.X, self.y, self.loss, self.delta, w)

    # ------------------------------------------------------------ transforms
    def to_theta(self, u: np.ndarray) -> np.ndarray:
        theta = np.array(u, dtype=float)
        with np.errstate(over="ignore"):  # a far-off start may overflow to inf: scored as _BIG
            theta[..., self._log_idx] = np.exp(theta[..., self._log_idx])
        return theta

    def to_u(self, theta: np.ndarray) -> np.ndarray:
        safe = np.where(self.is_log, np.maximum(theta, 1e-300), 1.0)
        return np.where(self.is_log, np.log(safe), theta)

    # ------------------------------------------------------------ evaluation
    def evaluate(self, theta: np.ndarray) -> np.ndarray:
        """Predictions for parameter sets ``theta`` (B, p) -> (B, m)."""
        theta = np.atleast_2d(theta)
        kw = {p: theta[:, [j]] for j, p in enumerate(self.law.params)}
        with np.errstate(all="ignore"):  # far-off parameter sets give inf/nan: scored as _BIG
            out = np.asarray(self.law.func(**self.X, **kw), dtype=float)
        if out.size == theta.shape[0] * self.y.size:
            return out.reshape(theta.shape[0], -1)
        return np.array([self.evaluate_one(t) for t in theta])  # law does not broadcast

    def evaluate_one(self, theta: np.ndarray) -> np.ndarray:
        kw = dict(zip(self.law.params, theta.tolist()))
        with np.errstate(all="ignore"):
            out = np.asarray(self.law.func(**self.X, **kw), dtype=float)
        if out.size == self.y.size:
            return out.ravel()
        return np.broadcast_to(out, (self.law.n_outputs, self.y.size // self.law.n_outputs)).ravel()

    def jac_u(self, theta: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """d prediction / d u for the parameters ``idx``: (q, m)."""
        idx = np.arange(theta.size) if idx is None else idx
        if self.law.grad is not None:
            kw = dict(zip(self.law.params, theta.tolist()))
            with np.errstate(all="ignore"):
                g = np.asarray(self.law.grad(**self.X, **kw), dtype=float).reshape(theta.size, -1)
            g = g * np.where(self.is_log, theta, 1.0)[:, None]  # chain rule: d theta / d u
            return g[idx]
        u = self.to_u(theta)
        h = 1e-6 * np.maximum(1.0, np.abs(u[idx]))
        U = np.repeat(u[None], 2 * idx.size, axis=0)
        U[np.arange(idx.size), idx] += h
        U[idx.size + np.arange(idx.size), idx] -= h
        F = self.evaluate(self.to_theta(U))
        return (F[: idx.size] - F[idx.size:]) / (2 * h[:, None])

    def resid_jac(self, theta: np.ndarray) -> np.ndarray:
        """d residual / d u on the objective's scale (log residuals divide by the prediction): (p, m)."""
        J = self.jac_u(theta)
        if self.log_resid:
            J = J / self.evaluate_one(theta)
        return np.where(np.isfinite(J), J, 0.0)

    # ------------------------------------------------------------ losses
    def residuals(self, pred: np.ndarray) -> np.ndarray:
        """Residuals in the objective's scale (log or linear), same shape as ``pred``."""
        if not self.log_resid:
            return pred - self.y
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.log(pred) - self._log_y
        return np.where(pred > 0, r, np.inf)

    def loss_terms(self, r: np.ndarray) -> np.ndarray:
        if self.loss == "huber_log":
            a = np.abs(r)
            return np.where(a <= self.delta, 0.5 * r * r, self.delta * (a - 0.5 * self.delta))
        return r * r

    def objective_values(self, pred: np.ndarray) -> np.ndarray:
        """Objective for each row of ``pred`` (B, m) -> (B,)."""
        with np.errstate(invalid="ignore"):  # inf * 0 where a resample leaves a point out
            terms = np.where(self.w > 0, self.loss_terms(self.residuals(pred)), 0.0) @ self.w
        if self.loss != "huber_log":
            terms = terms / self.w.sum()
        return np.where(np.isfinite(terms), terms, _BIG)

    # ------------------------------------------------------------ variable projection
    def basis(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Offset (B, m) and linear basis (B, k, m) at the nonlinear part of ``theta`` (B, p)."""
        lin = np.flatnonzero(self.lin)
        B, k = theta.shape[0], lin.size
        T = np.repeat(theta[:, None, :], k + 1, axis=1)  # (B, k+1, p)
        T[:, :, lin] = np.vstack([np.zeros(k), np.eye(k)])
        out = self.evaluate(T.reshape(B * (k + 1), -1)).reshape(B, k + 1, -1)
        return out[:, 0], out[:, 1:] - out[:, :1]

    def solve_linear_batch(self, theta: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
        """Weighted least-squares linear parameters for each row of ``theta`` (B, p), bounds ignored."""
        w = self.w if w is None else w
        f0, phi = self.basis(theta)
        bad = ~(np.isfinite(phi).all(axis=(1, 2)) & np.isfinite(f0).all(axis=1))
        phi, f0 = np.where(bad[:, None, None], 1.0, phi), np.where(bad[:, None], 0.0, f0)
        A = np.einsum("bkm,m,blm->bkl", phi, w, phi)
        rhs = np.einsum("bkm,m,bm->bk", phi, w, self.y[None] - f0)
        ridge = 1e-12 * np.trace(A, axis1=1, axis2=2)[:, None, None] * np.eye(A.shape[1])
        beta = np.linalg.solve(A + ridge + 1e-300 * np.eye(A.shape[1]), rhs[..., None])[..., 0]
        beta[bad] = np.nan  # scored as _BIG
        out = theta.copy()
        out[:, self.lin] = np.clip(beta, self.lo[self.lin], self.hi[self.lin])
        out[bad] = np.nan
        return out

    def solve_linear(self, theta: np.ndarray) -> np.ndarray:
        """Bound-respecting weighted least-squares linear parameters at one ``theta`` (p,)."""
        return self.solve_linear_pred(theta)[0]

    def solve_linear_pred(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`solve_linear`; also the prediction (m,), which linear parameters are free of
        their bounds (k,) and the linear basis (k, m)."""
        f0, phi = self.basis(theta[None])
        sw = np.sqrt(self.w)
        A, b = (phi[0] * sw).T, (self.y - f0[0]) * sw
        lo, hi = self.lo[self.lin], self.hi[self.lin]
        if not (np.all(np.isfinite(A)) and np.all(np.isfinite(b))):  # a far-off nonlinear point
            return theta.copy(), np.full(self.y.shape, np.inf), np.ones(lo.size, dtype=bool), phi[0]
        beta = np.linalg.lstsq(A, b, rcond=None)[0]
        free = np.ones(lo.size, dtype=bool)
        if np.any(beta < lo) or np.any(beta > hi):
            beta = bounded_lstsq(A, b, lo, hi)
            with np.errstate(invalid="ignore"):  # inf bounds: never active
                free = ~np.isclose(beta, lo, rtol=1e-12, atol=1e-300) & ~np.isclose(beta, hi, rtol=1e-12, atol=1e-300)
        out = theta.copy()
        out[self.lin] = beta
        return out, f0[0] + beta @ phi[0], free, phi[0]


def bounded_lstsq(A: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """argmin ||A x - b|| with lo <= x <= hi. Bounds of 0 or -inf below and +inf above (the usual
    case: non-negative scales) go to scipy's NNLS, an unbounded column as a difference of two
    non-negative ones; other bounds to ``lsq_linear``."""
    if np.all(np.isinf(hi)) and np.all((lo == 0) | np.isneginf(lo)):
        free = np.isneginf(lo)
        x = nnls(np.hstack([A, -A[:, free]]), b)[0]
        out = x[: A.shape[1]]
        out[free] -= x[A.shape[1]:]
        return out
    return lsq_linear(A, b, bounds=(lo, hi)).x


# ---------------------------------------------------------------- input scaling


@dataclass(frozen=True)
class InputScaling:
    """Divide each positive input by its geometric mean inside the engine.

    The law's ``rescale`` maps parameters between the user's units and the engine's:
    :math:`f(x / k; \\theta_e) = f(x; \\theta)`. Without ``rescale`` the factors are all 1.
    """

    law: Law
    factors: dict[str, float]

    @classmethod
    def of(cls, law: Law, X: Mapping[str, np.ndarray]) -> InputScaling:
        if law.rescale is None:
            return cls(law, {i: 1.0 for i in law.inputs})
        k = {i: float(np.exp(np.mean(np.log(X[i])))) if i in law.positive_inputs else 1.0 for i in law.inputs}
        return cls(law, k)

    @property
    def identity(self) -> bool:
        return all(v == 1.0 for v in self.factors.values())

    def inputs(self, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {i: np.asarray(X[i], dtype=float) / self.factors.get(i, 1.0) for i in X}

    def to_engine(self, theta: np.ndarray) -> np.ndarray:
        """User parameters (B, p) or (p,) -> engine parameters."""
        return self._map(theta, self.factors)

    def to_user(self, theta: np.ndarray) -> np.ndarray:
        """Engine parameters (B, p) or (p,) -> user parameters."""
        return self._map(theta, {i: 1.0 / v for i, v in self.factors.items()})

    def _map(self, theta: np.ndarray, k: Mapping[str, float]) -> np.ndarray:
        if self.identity:
            return np.array(theta, dtype=float)
        theta = np.asarray(theta, dtype=float)
        names = self.law.params
        with np.errstate(all="ignore"):
            out = self.law.rescale(k, **{p: theta[..., j] for j, p in enumerate(names)})
        return np.stack([np.broadcast_to(out[p], theta.shape[:-1]) for p in names], axis=-1)


# ---------------------------------------------------------------- starts


def _default_start(law: Law, p: str) -> float:
    lo, hi = law.bound(p)
    if np.isfinite(lo) and np.isfinite(hi):
        return 0.5 * (lo + hi)
    if np.isfinite(lo):
        return lo + 1.0
    return hi - 1.0 if np.isfinite(hi) else 1.0


def grid_starts(prob: Problem, scaling: InputScaling | None = None) -> np.ndarray:
    """The law's start grid as full engine parameter vectors (G, p); missing linear params solved.

    For ``mse`` the linear parameters are solved at every start anyway, so starts that differ
    only in them are kept once.
    """
    law = prob.law
    gnames, G = law.start_grid(skip=law.linear if prob.uses_varpro else ())
    theta = np.array([[_default_start(law, p) for p in law.params]] * G.shape[0])
    for j, p in enumerate(gnames):
        theta[:, law.params.index(p)] = G[:, j]
    if scaling is not None:
        theta = scaling.to_engine(theta)
    missing_lin = prob.lin & ~np.isin(law.params, gnames)
    if missing_lin.any() and not prob.uses_varpro:
        # relative weights for log objectives: minimising (pred - y)^2 / y^2 approximates them
        w = prob.w / prob.y**2 if prob.log_resid else prob.w
        solved = _chunked(prob, theta, lambda t: prob.solve_linear_batch(t, w))
        theta[:, missing_lin] = np.nan_to_num(solved[:, missing_lin], nan=1.0)
        theta = _keep_alive(prob, theta, missing_lin & prob.is_log)
    tiny = np.where(prob.is_log, 1e-12, 0.0)
    return np.clip(theta, np.maximum(prob.lo, tiny), prob.hi)


def _keep_alive(prob: Problem, theta: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Raise log-scale linear parameters whose least-squares start is (near) 0 to a term of 0.1%
    of the data: at 0 their log has no gradient, and a refit could never bring them back."""
    if not cols.any():
        return theta
    phi = _chunked(prob, theta, lambda t: np.median(np.abs(prob.basis(t)[1]), axis=2))  # (G, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        floor = 1e-3 * np.median(np.abs(prob.y)) / phi  # the coefficient of a term 0.1% of |y|
    at = np.flatnonzero(prob.lin)  # basis columns -> parameter columns
    out = theta.copy()
    for k, j in enumerate(at):
        if cols[j]:
            out[:, j] = np.where(np.isfinite(floor[:, k]), np.maximum(theta[:, j], floor[:, k]), theta[:, j])
    return out


def _chunked(prob: Problem, theta: np.ndarray, fn) -> np.ndarray:
    k = int(prob.lin.sum()) + 1
    size = max(1, _CHUNK // (k * prob.y.size))
    return np.concatenate([fn(theta[i:i + size]) for i in range(0, theta.shape[0], size)])


def score_starts(prob: Problem, theta: np.ndarray) -> np.ndarray:
    """Objective at each start (G, p) -> (G,), vectorised (linear params solved for ``mse``)."""
    def one_chunk(t: np.ndarray) -> np.ndarray:
        if prob.uses_varpro:
            t = prob.solve_linear_batch(t)
        return prob.objective_values(prob.evaluate(t))
    return _chunked(prob, theta, lambda t: one_chunk(t)[:, None])[:, 0]


# ---------------------------------------------------------------- refinement


@dataclass(frozen=True)
class Budget:
    """Iteration limit and tolerance of one local refinement."""

    maxiter: int
    tol: float


SEARCH = Budget(250, 1e-12)  # every refined start (a trust region converges fast near an optimum)
POLISH = Budget(2000, 1e-13)  # the best optima: long valleys take many steps
CHECK = Budget(300, 1e-13)  # a restart from a polished optimum: does it still go down?
RESAMPLE = Budget(150, 1e-8)  # bootstrap refits


@dataclass
class Solution:
    theta: np.ndarray
    value: float
    start: int  # index into the start list
    nit: int
    converged: bool
    restart_gain: float = float("nan")  # objective drop of the last restart (converged when tiny)


def refine(prob: Problem, theta0: np.ndarray, start: int = -1, budget: Budget = SEARCH) -> Solution:
    """Local optimisation from one start: a bounded trust-region Gauss-Newton
    (``least_squares``, Jacobian scaling), which copes with the near-degenerate directions of
    scaling laws far better than a quasi-Newton method, over the free parameters (the nonlinear
    ones only for ``mse``). ``huber_log`` runs on the same residuals with a weighted Huber loss."""
    if prob.uses_varpro and prob.lin.all():  # every parameter linear: closed form
        theta = prob.solve_linear(theta0)
        return Solution(theta, float(prob.objective_values(prob.evaluate(theta))[0]), start, 0, True)
    varpro = prob.uses_varpro
    free = ~prob.gauge & (~prob.lin if varpro else True)
    theta0 = prob.solve_linear(theta0) if varpro else theta0
    u_all = np.clip(prob.to_u(theta0), prob.ulo, prob.uhi)
    lo, hi = prob.ulo[free], prob.uhi[free]
    x0 = np.clip(u_all[free], np.nextafter(lo, np.inf), np.nextafter(hi, -np.inf))
    huber = prob.loss == "huber_log"
    sw = np.ones_like(prob.w) if huber else np.sqrt(prob.w)  # Huber weighs inside its loss
    memo: dict[bytes, tuple] = {}

    def solved(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        key = v.tobytes()  # least_squares asks for the residuals, then the Jacobian, at one point
        if key not in memo:
            u = u_all.copy()
            u[free] = v
            theta = prob.to_theta(u)
            memo.clear()
            memo[key] = prob.solve_linear_pred(theta) if varpro else (theta, prob.evaluate_one(theta), None, None)
        return memo[key]

    def resid(v: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # inf * 0 where a resample leaves a point out
            r = prob.residuals(solved(v)[1]) * sw
        return np.where(np.isfinite(r), r, 1e10)

    def jac(v: np.ndarray) -> np.ndarray:
        theta, pred, lin_free, basis = solved(v)
        J = prob.jac_u(theta, np.flatnonzero(free))  # (q, m)
        J = np.where(np.isfinite(J), J / pred if prob.log_resid else J, 0.0).T * sw[:, None]  # (m, q)
        if varpro and lin_free.any():  # Kaufman: project out the basis of the free linear parameters
            phi = basis[lin_free].T * sw[:, None]  # (m, k)
            if not np.all(np.isfinite(phi)):
                return np.zeros_like(J)
            Q = np.linalg.qr(phi)[0]
            J = J - Q @ (Q.T @ J)
        return J

    loss = weighted_huber(prob.w, prob.delta) if huber else "linear"
    res = least_squares(resid, x0, jac=jac, bounds=(lo, hi), method="trf", x_scale="jac", loss=loss,
                        ftol=budget.tol, xtol=budget.tol, gtol=budget.tol, max_nfev=budget.maxiter)
    theta, value = _onto_bounds(prob, solved(res.x)[0])
    return Solution(theta, value, start, int(res.nfev), res.status > 0 and value < _BIG)


def _onto_bounds(prob: Problem, theta: np.ndarray) -> tuple[np.ndarray, float]:
    """``theta`` with each linear-scale parameter that sits next to a finite bound put on it when that
    does not raise the objective: the trust region stays strictly inside its bounds, so an optimum on
    a bound (E = 0) would otherwise read 1e-10 and an interval could never reach the bound."""
    value = float(prob.objective_values(prob.evaluate(theta))[0])
    for j in np.flatnonzero(~prob.is_log & ~prob.gauge):
        for bound in (prob.lo[j], prob.hi[j]):
            if np.isfinite(bound) and theta[j] != bound and abs(theta[j] - bound) <= 1e-6 * max(1.0, abs(bound)):
                trial = theta.copy()
                trial[j] = bound
                if prob.uses_varpro and prob.lin[j]:
                    continue  # the linear solve already put it on its bound
                v = float(prob.objective_values(prob.evaluate(trial))[0])
                if v <= value * (1 + 1e-10):
                    theta, value = trial, v
    return theta, value


def weighted_huber(w: np.ndarray, delta: float):
    r"""``least_squares`` loss :math:`\rho_i(z) = w_i\, 2 H_\delta(\sqrt z)` of squared residuals z,
    with its first two derivatives: half their sum is :math:`\sum_i w_i H_\delta(r_i)`."""
    d2 = delta * delta

    def rho(z: np.ndarray) -> np.ndarray:
        inside = z <= d2
        outside = np.maximum(z, d2)  # the outside branches, evaluated where they are used
        root = np.sqrt(outside)
        return w * np.array([np.where(inside, z, 2 * delta * root - d2),
                             np.where(inside, 1.0, delta / root),
                             np.where(inside, 0.0, -0.5 * delta / (root * outside))])
    return rho


def polish(prob: Problem, sol: Solution, restarts: int = 2) -> Solution:
    """Refine ``sol`` with a long budget, then restart from its end point. Converged: a restart
    that itself converges (the trust region's own tests, within its budget) and no longer lowers the
    objective by more than ``CONVERGED_RTOL`` (relative). A solution that fails this after
    ``restarts`` restarts is returned with ``converged=False``."""
    new = refine(prob, sol.theta, sol.start, POLISH)
    best, nit = (new if new.value <= sol.value else sol), sol.nit + new.nit
    for _ in range(restarts + 1):
        new = refine(prob, best.theta, best.start, CHECK)
        nit += new.nit
        gain = best.value - new.value
        if new.value < best.value:
            best = new
        if new.converged and gain <= CONVERGED_RTOL * abs(best.value) and best.value < _BIG:
            return replace(best, nit=nit, converged=True, restart_gain=max(gain, 0.0))
    return replace(best, nit=nit, converged=False, restart_gain=max(gain, 0.0))


def multistart(prob: Problem, scaling: InputScaling | None = None, n_refine: int = 16, n_polish: int = 2,
               n_agree: int = 3) -> tuple[list[Solution], np.ndarray]:
    """Score the grid and refine the best starts in order, up to ``n_refine`` of them, stopping once
    ``n_agree`` refined starts reach the best objective so far (within ``CONVERGED_RTOL``); then
    polish the best ``n_polish`` distinct optima. Solutions sorted by objective, the first one
    polished; also returns the starts."""
    starts = grid_starts(prob, scaling)
    order = np.argsort(score_starts(prob, starts), kind="stable")[:n_refine]
    sols: list[Solution] = []
    for i in order:
        sols.append(refine(prob, starts[i], int(i), SEARCH))
        best = min(s.value for s in sols)
        if sum(s.value <= best * (1 + CONVERGED_RTOL) for s in sols) >= n_agree:
            break
    sols.sort(key=lambda s: s.value)
    polished = [polish(prob, s) for s in distinct(sols, n_polish)]
    sols = sorted(polished + [s for s in sols if not any(s is p for p in polished)], key=lambda s: s.value)
    if not any(sols[0] is p for p in polished):
        sols[0] = polish(prob, sols[0])
    return sols, starts


def distinct(sols: list[Solution], k: int, rtol: float = 1e-6) -> list[Solution]:
    """Up to ``k`` solutions with distinct objective values (distinct local optima)."""
    out: list[Solution] = []
    for s in sols:
        if all(abs(s.value - o.value) > rtol * max(abs(o.value), 1e-300) for o in out):
            out.append(s)
        if len(out) == k:
            break
    return out


# ---------------------------------------------------------------- bootstrap


def group_weights(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row weights of one bootstrap resample of whole groups: (n,) counts."""
    codes, inv = np.unique(groups, return_inverse=True)
    draw = rng.integers(0, codes.size, codes.size)
    counts = np.bincount(draw, minlength=codes.size)
    return counts[inv].astype(float)


def bootstrap(prob: Problem, warm: list[np.ndarray], fresh: np.ndarray, groups: np.ndarray, n_boot: int,
              seed: int = 0, n_jobs: int = 1, n_fresh: int = 2, progress: str | None = None) -> np.ndarray:
    """Refit on ``n_boot`` group resamples; engine parameter draws (n_boot, p).

    Each refit starts from the ``warm`` optima of the full data and from the ``n_fresh`` best of
    the ``fresh`` grid starts, scored on the resample: a warm start stuck at a bound (E = 0, a
    log parameter whose gradient vanishes there) cannot trap every refit.

    Resample ``i`` draws from its own child of ``SeedSequence(seed)``, so the draws do not
    depend on ``n_jobs``. With ``n_jobs > 1`` the resamples are split over a process pool (the
    law must then be picklable: a module-level function, not a lambda). ``progress``, when
    given, labels a progress bar on stderr.
    """
    from tqdm import tqdm

    children = np.random.SeedSequence(seed).spawn(n_boot)
    args = (prob, warm, fresh, groups, n_fresh)
    with tqdm(total=n_boot, desc=progress, disable=progress is None, leave=False, file=sys.stderr) as bar:
        if n_jobs <= 1 or n_boot < 2 * n_jobs:
            return _bootstrap_chunk(*args, children, bar.update)
        chunks = [list(c) for c in np.array_split(np.array(children, dtype=object), n_jobs)]
        with ProcessPoolExecutor(n_jobs) as pool:
            futures = [pool.submit(_bootstrap_chunk, *args, chunk) for chunk in chunks]
            for future in as_completed(futures):
                bar.update(future.result().shape[0])
            return np.concatenate([f.result() for f in futures])  # in submission order: seed-stable


def _bootstrap_chunk(prob: Problem, warm: list[np.ndarray], fresh: np.ndarray, groups: np.ndarray,
                     n_fresh: int, seeds: list[np.random.SeedSequence], done: Any = None) -> np.ndarray:
    draws = np.empty((len(seeds), len(prob.law.params)))
    n_out = prob.law.n_outputs
    with threadpool_limits(limits=1, user_api="blas"):  # small matrices: threads cost more than they give
        for i, ss in enumerate(seeds):
            bp = prob.with_weights(np.tile(group_weights(groups, np.random.default_rng(ss)), n_out))
            draws[i] = _resample_optimum(bp, warm, fresh, n_fresh).theta
            if done is not None:
                done(1)
    return draws


def _resample_optimum(bp: Problem, warm: list[np.ndarray], fresh: np.ndarray, n_fresh: int) -> Solution:
    """The best refit of one resample, from the warm starts and the ``n_fresh`` best fresh grid starts."""
    best_fresh = fresh[np.argsort(score_starts(bp, fresh), kind="stable")[:n_fresh]]
    return min((refine(bp, s, budget=RESAMPLE) for s in [*warm, *best_fresh]), key=lambda s: s.value)
