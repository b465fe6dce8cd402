"""Numerical core of the fitter: objectives, start grids, refinement, bootstrap.

Shapes: ``n`` data rows, ``m = n_outputs * n`` fitted values (outputs stacked
output-major), ``p`` parameters, ``B`` parameter sets evaluated at once.

Which trick serves which objective:

* ``mse``: variable projection. The parameters that enter linearly are solved
  by (weighted, bound-respecting) least squares inside the residual function,
  so the search runs only over the nonlinear ones, with a bounded trust-region
  Gauss-Newton (``scipy.optimize.least_squares``) and Kaufman's analytic
  variable-projection Jacobian.
* ``mse_log``: the log residual is not linear in any parameter; the same
  trust-region method runs over all parameters (positive ones in log space)
  with the law's analytic Jacobian.
* ``huber_log``: not a sum of squares; L-BFGS-B over all parameters, positive
  ones in log space (for ``chinchilla`` this is the log-sum-exp
  parametrisation ``a = log A, b = log B, e = log E``), with the law's
  analytic gradient. Linear parameters missing from the start grid are
  initialised by weighted least squares.

Laws without an analytic gradient get batched central differences. Gauge
parameters (a symmetry makes them redundant) are held at their start value.
In every case the whole start grid is scored in one vectorised pass (linear
parameters solved per start for ``mse``) and only the best starts are refined.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares, lsq_linear, minimize
from threadpoolctl import threadpool_limits

from .laws import Law

LOSSES = ("huber_log", "mse", "mse_log")
_BIG = 1e30
_CHUNK = 4_000_000  # max floats per batched evaluation


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
        lo = np.array([law.bound(p)[0] for p in law.params])
        hi = np.array([law.bound(p)[1] for p in law.params])
        with np.errstate(divide="ignore"):
            self.ulo = np.where(self.is_log, np.log(np.maximum(lo, 0.0)), lo)
            self.uhi = np.where(self.is_log, np.log(hi), hi)
        self.lin = np.array([p in law.linear for p in law.params], dtype=bool)
        self.gauge = np.array([p in law.gauge for p in law.params], dtype=bool)

    def ubounds(self, u0: np.ndarray) -> list[tuple[float, float]]:
        """L-BFGS-B bounds on u; gauge parameters are pinned at ``u0``."""
        return list(zip(np.where(self.gauge, u0, self.ulo), np.where(self.gauge, u0, self.uhi)))

    @property
    def uses_varpro(self) -> bool:
        return self.loss == "mse" and bool(self.lin.any())

    @property
    def log_resid(self) -> bool:
        return self.loss in ("huber_log", "mse_log")

    def with_weights(self, w: np.ndarray) -> Problem:
        return Problem(self.law, self.X, self.y, self.loss, self.delta, w)

    # ------------------------------------------------------------ transforms
    def to_theta(self, u: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # a far-off start may overflow to inf: scored as _BIG
            return np.where(self.is_log, np.exp(np.where(self.is_log, u, 0.0)), u)

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
        kw = {p: float(v) for p, v in zip(self.law.params, theta)}
        with np.errstate(all="ignore"):
            out = np.asarray(self.law.func(**self.X, **kw), dtype=float)
        return np.broadcast_to(out, (self.law.n_outputs, self.y.size // self.law.n_outputs)).ravel()

    def jac_u(self, theta: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """d prediction / d u for the parameters ``idx``: (q, m)."""
        idx = np.arange(theta.size) if idx is None else idx
        if self.law.grad is not None:
            kw = {p: float(v) for p, v in zip(self.law.params, theta)}
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

    # ------------------------------------------------------------ losses
    def residuals(self, pred: np.ndarray) -> np.ndarray:
        """Residuals in the objective's scale (log or linear), same shape as ``pred``."""
        if not self.log_resid:
            return pred - self.y
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.log(pred) - np.log(self.y)
        return np.where(pred > 0, r, np.inf)

    def loss_terms(self, r: np.ndarray) -> np.ndarray:
        if self.loss == "huber_log":
            a = np.abs(r)
            return np.where(a <= self.delta, 0.5 * r * r, self.delta * (a - 0.5 * self.delta))
        return r * r

    def objective_values(self, pred: np.ndarray) -> np.ndarray:
        """Objective for each row of ``pred`` (B, m) -> (B,)."""
        terms = self.loss_terms(self.residuals(pred)) @ self.w
        if self.loss != "huber_log":
            terms = terms / self.w.sum()
        return np.where(np.isfinite(terms), terms, _BIG)

    def psi(self, r: np.ndarray) -> np.ndarray:
        """d objective / d residual (weights included)."""
        if self.loss == "huber_log":
            return self.w * np.clip(r, -self.delta, self.delta)
        return 2.0 * self.w * r / self.w.sum()

    # ------------------------------------------------------------ full-space objective
    def full_objective(self, u: np.ndarray) -> tuple[float, np.ndarray]:
        theta = self.to_theta(u)
        pred = self.evaluate_one(theta)
        r = self.residuals(pred)
        if not np.all(np.isfinite(r)):
            return _BIG, np.zeros_like(u)
        dpred = self.psi(r) / pred if self.log_resid else self.psi(r)
        with np.errstate(all="ignore"):
            grad = self.jac_u(theta) @ dpred
        if not np.all(np.isfinite(grad)):
            return _BIG, np.zeros_like(u)
        return float(self.loss_terms(r) @ self.w) / self._norm(), grad

    def _norm(self) -> float:
        return 1.0 if self.loss == "huber_log" else float(self.w.sum())

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
        out[:, self.lin] = beta
        return out

    def solve_linear(self, theta: np.ndarray) -> np.ndarray:
        """Bound-respecting weighted least-squares linear parameters at one ``theta`` (p,)."""
        return self.solve_linear_pred(theta)[0]

    def solve_linear_pred(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`solve_linear`, also returning the prediction (m,)."""
        f0, phi = self.basis(theta[None])
        sw = np.sqrt(self.w)
        A, b = (phi[0] * sw).T, (self.y - f0[0]) * sw
        if not (np.all(np.isfinite(A)) and np.all(np.isfinite(b))):  # a far-off nonlinear point
            return theta.copy(), np.full(self.y.shape, np.inf)
        beta = np.linalg.lstsq(A, b, rcond=None)[0]
        lo = np.array([self.law.bound(p)[0] for p in self.law.params])[self.lin]
        hi = np.array([self.law.bound(p)[1] for p in self.law.params])[self.lin]
        if np.any(beta < lo) or np.any(beta > hi):
            beta = lsq_linear(A, b, bounds=(lo, hi)).x
        out = theta.copy()
        out[self.lin] = beta
        return out, f0[0] + beta @ phi[0]


# ---------------------------------------------------------------- starts


def _default_start(law: Law, p: str) -> float:
    lo, hi = law.bound(p)
    if np.isfinite(lo) and np.isfinite(hi):
        return 0.5 * (lo + hi)
    if np.isfinite(lo):
        return lo + 1.0
    return hi - 1.0 if np.isfinite(hi) else 1.0


def grid_starts(prob: Problem) -> np.ndarray:
    """The law's start grid as full parameter vectors (G, p); missing linear params solved."""
    law = prob.law
    gnames, G = law.start_grid()
    theta = np.array([[_default_start(law, p) for p in law.params]] * G.shape[0])
    for j, p in enumerate(gnames):
        theta[:, law.params.index(p)] = G[:, j]
    missing_lin = prob.lin & ~np.isin(law.params, gnames)
    if missing_lin.any():
        # relative weights for log objectives: minimising (pred - y)^2 / y^2 approximates them
        w = prob.w / prob.y**2 if prob.log_resid else prob.w
        solved = _chunked(prob, theta, lambda t: prob.solve_linear_batch(t, w))
        theta[:, missing_lin] = np.nan_to_num(solved[:, missing_lin], nan=1.0)
    lo = np.array([law.bound(p)[0] for p in law.params])
    hi = np.array([law.bound(p)[1] for p in law.params])
    tiny = np.where(prob.is_log, 1e-12, 0.0)
    return np.clip(theta, np.maximum(lo, tiny), hi)


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


@dataclass
class Solution:
    theta: np.ndarray
    value: float
    start: int  # index into the start list
    nit: int
    converged: bool


def refine(prob: Problem, theta0: np.ndarray, start: int = -1, maxiter: int = 3000,
           tol: float = 1e-12) -> Solution:
    """Local optimisation from one start.

    Squared losses use a bounded trust-region Gauss-Newton (``least_squares``),
    which copes with the near-degenerate directions scaling laws have far
    better than a quasi-Newton method; ``huber_log`` uses L-BFGS-B.
    """
    if prob.uses_varpro and prob.lin.all():  # every parameter linear: closed form
        theta = prob.solve_linear(theta0)
        return Solution(theta, float(prob.objective_values(prob.evaluate(theta))[0]), start, 0, True)
    if prob.loss in ("mse", "mse_log"):
        return _refine_lsq(prob, theta0, start, maxiter, tol)
    u0 = np.clip(prob.to_u(theta0), prob.ulo, prob.uhi)
    res = minimize(prob.full_objective, u0, jac=True, method="L-BFGS-B", bounds=prob.ubounds(u0),
                   options={"maxiter": maxiter, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20})
    theta = prob.to_theta(res.x)
    value = float(prob.objective_values(prob.evaluate(theta))[0])
    return Solution(theta, value, start, int(res.nit), bool(res.success) and value < _BIG)


def _refine_lsq(prob: Problem, theta0: np.ndarray, start: int, maxiter: int, tol: float) -> Solution:
    """Trust-region least squares over the free parameters (nonlinear ones only for ``mse``)."""
    varpro = prob.uses_varpro
    free = ~prob.gauge & (~prob.lin if varpro else True)
    theta0 = prob.solve_linear(theta0) if varpro else theta0
    u_all = np.clip(prob.to_u(theta0), prob.ulo, prob.uhi)
    lo, hi = prob.ulo[free], prob.uhi[free]
    x0 = np.clip(u_all[free], np.nextafter(lo, np.inf), np.nextafter(hi, -np.inf))
    sw = np.sqrt(prob.w)

    def theta_pred(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = u_all.copy()
        u[free] = v
        theta = prob.to_theta(u)
        if varpro:
            theta[prob.lin] = theta0[prob.lin]
            return prob.solve_linear_pred(theta)
        return theta, prob.evaluate_one(theta)

    def resid(v: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # inf * 0 where a resample leaves a point out
            r = prob.residuals(theta_pred(v)[1]) * sw
        return np.where(np.isfinite(r), r, 1e10)

    def jac(v: np.ndarray) -> np.ndarray:
        theta, pred = theta_pred(v)
        J = prob.jac_u(theta, np.flatnonzero(free))  # (q, m)
        J = np.where(np.isfinite(J), J / pred if prob.log_resid else J, 0.0).T * sw[:, None]  # (m, q)
        if varpro:  # Kaufman's variable-projection Jacobian: project out the linear basis
            phi = prob.basis(theta[None])[1][0].T * sw[:, None]  # (m, k)
            if not np.all(np.isfinite(phi)):
                return np.zeros_like(J)
            Q = np.linalg.qr(phi)[0]
            J = J - Q @ (Q.T @ J)
        return J

    res = least_squares(resid, x0, jac=jac, bounds=(lo, hi), method="trf", x_scale="jac",
                        ftol=tol, xtol=tol, gtol=tol, max_nfev=maxiter)
    theta = theta_pred(res.x)[0]
    value = float(prob.objective_values(prob.evaluate(theta))[0])
    return Solution(theta, value, start, int(res.nfev), res.status > 0 and value < _BIG)


def multistart(prob: Problem, n_refine: int = 16) -> tuple[list[Solution], np.ndarray]:
    """Score the grid, refine the best ``n_refine`` starts; solutions sorted by objective."""
    starts = grid_starts(prob)
    scores = score_starts(prob, starts)
    order = np.argsort(scores, kind="stable")[:n_refine]
    sols = [refine(prob, starts[i], int(i)) for i in order]
    sols.sort(key=lambda s: s.value)
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


def bootstrap(prob: Problem, starts: list[np.ndarray], groups: np.ndarray, n_boot: int,
              seed: int = 0, n_jobs: int = 1) -> np.ndarray:
    """Refit on ``n_boot`` group resamples, warm-started from ``starts``; draws (n_boot, p).

    Resample ``i`` draws from its own child of ``SeedSequence(seed)``, so the
    draws do not depend on ``n_jobs``. With ``n_jobs > 1`` the resamples are
    split over a process pool (the law must then be picklable: a module-level
    function, not a lambda).
    """
    children = np.random.SeedSequence(seed).spawn(n_boot)
    if n_jobs <= 1 or n_boot < 2 * n_jobs:
        return _bootstrap_chunk(prob, starts, groups, children)
    chunks = [list(c) for c in np.array_split(np.array(children, dtype=object), n_jobs)]
    with ProcessPoolExecutor(n_jobs) as pool:
        parts = pool.map(_bootstrap_chunk, [prob] * n_jobs, [starts] * n_jobs, [groups] * n_jobs, chunks)
        return np.concatenate(list(parts))


def _bootstrap_chunk(prob: Problem, starts: list[np.ndarray], groups: np.ndarray,
                     seeds: list[np.random.SeedSequence]) -> np.ndarray:
    draws = np.empty((len(seeds), len(prob.law.params)))
    n_out = prob.law.n_outputs
    with threadpool_limits(limits=1, user_api="blas"):  # each process: one BLAS thread
        for i, ss in enumerate(seeds):
            w = np.tile(group_weights(groups, np.random.default_rng(ss)), n_out)
            bp = prob.with_weights(w)
            draws[i] = min((refine(bp, s, tol=1e-10) for s in starts), key=lambda s: s.value).theta
    return draws
