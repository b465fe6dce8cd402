"""Registry of scaling laws: pure numpy functions plus the metadata a fitter needs.

Each law is a plain, vectorised numpy function called with keyword arguments
(its inputs, then its parameters). Parameters may be arrays of shape ``(B, 1)``
so that ``B`` parameter sets are evaluated at once on inputs of shape ``(n,)``;
the fitter relies on this to score a whole start grid in one call.

Examples
--------
>>> from forgetting_laws import laws
>>> law = laws.get("power_law")
>>> float(law(x=10.0, s=1.0, c=2.0, alpha=1.0))
1.2
>>> "chinchilla" in laws.names()
True
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Law",
    "LawError",
    "register",
    "get",
    "names",
    "from_function",
    "from_lmfit_model",
    "inverse_linear",
    "power_law",
    "kalajdzievski_ft",
    "kalajdzievski_forget",
    "kalajdzievski_joint",
    "chinchilla",
]

Bounds = tuple[float, float]
Grid = Mapping[str, Sequence[float]] | Callable[[], Mapping[str, Sequence[float]]]

_INF = float("inf")


class LawError(ValueError):
    """A law is malformed, unknown or registered twice."""


@dataclass(frozen=True)
class Law:
    """A scaling law and what a fitter needs to know about it.

    Parameters
    ----------
    name : str
        Registry name, e.g. ``"chinchilla"``.
    func : callable
        Vectorised numpy function ``func(**inputs, **params)``. Returns an array
        of shape ``(..., n)``, or ``(..., len(outputs), n)`` for a joint law.
    inputs : tuple of str
        Names of the independent variables, in order.
    params : tuple of str
        Names of the parameters, in order (the order of every parameter vector).
    bounds : dict
        ``param -> (low, high)``; missing parameters are unbounded.
    grid : dict or callable
        ``param -> starting values``; the start grid is their Cartesian product.
        Parameters in ``linear`` may be left out: the fitter then solves them in
        closed form for each start.
    linear : tuple of str
        Parameters the prediction is linear (affine) in, jointly.
    log_params : tuple of str
        Positive parameters the optimiser moves in log space (``a = log A``).
    positive_inputs : tuple of str
        Inputs that must be > 0 (they are raised to a power); an input spanning
        under a decade makes its exponent hard to identify.
    outputs : tuple of str
        Names of what the law predicts (default data columns for ``y``).
    formula, latex : str
        The formula as plain text and as LaTeX.
    gauge : tuple of str
        Parameters a symmetry of the law makes redundant: any value of them is
        matched by the other parameters, so the fitter holds them at their
        start value (which keeps the search well conditioned) and says so.
    grad : callable, optional
        ``grad(**inputs, **params) -> array (n_params, ..., n)``, the derivative
        of the prediction with respect to each parameter, in ``params`` order.
        Without it the fitter uses batched central differences.
    """

    name: str
    func: Callable[..., np.ndarray]
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    bounds: Mapping[str, Bounds] = field(default_factory=dict)
    grid: Grid = field(default_factory=dict)
    linear: tuple[str, ...] = ()
    log_params: tuple[str, ...] = ()
    positive_inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ("y",)
    formula: str = ""
    latex: str = ""
    gauge: tuple[str, ...] = ()
    grad: Callable[..., np.ndarray] | None = None

    def __post_init__(self) -> None:
        _check_law_fields(self)

    def __call__(self, **kwargs: Any) -> np.ndarray:
        """Evaluate the law: ``law(**inputs, **params)``."""
        return self.func(**kwargs)

    def bound(self, param: str) -> Bounds:
        """Return ``(low, high)`` for ``param`` (infinite where unbounded)."""
        low, high = self.bounds.get(param, (-_INF, _INF))
        return (-_INF if low is None else float(low), _INF if high is None else float(high))

    def start_grid(self) -> tuple[tuple[str, ...], np.ndarray]:
        """Return the gridded parameter names and the start grid, shape (G, len(names))."""
        grid = self.grid() if callable(self.grid) else self.grid
        gnames = tuple(p for p in self.params if p in grid)
        if not gnames:
            return (), np.zeros((1, 0))
        values = [np.asarray(grid[p], dtype=float) for p in gnames]
        return gnames, np.array(list(itertools.product(*values)), dtype=float)

    @property
    def n_outputs(self) -> int:
        return len(self.outputs)


def _check_law_fields(law: Law) -> None:
    if not law.name or not isinstance(law.name, str):
        raise LawError(f"law name {law.name!r} is invalid; give a non-empty string")
    if not law.inputs:
        raise LawError(f"law {law.name!r} has no inputs; name at least one input variable")
    if len(set(law.params)) != len(law.params):
        raise LawError(f"law {law.name!r} repeats a parameter name in {law.params}")
    clash = set(law.inputs) & set(law.params)
    if clash:
        raise LawError(f"law {law.name!r}: {sorted(clash)} are both inputs and parameters; rename one")
    for attr in ("linear", "log_params", "gauge"):
        unknown = set(getattr(law, attr)) - set(law.params)
        if unknown:
            raise LawError(
                f"law {law.name!r}: {attr} names {sorted(unknown)} that are not parameters; "
                f"parameters are {list(law.params)}"
            )
    grid = {} if callable(law.grid) else law.grid
    for p in list(law.bounds) + list(grid):
        if p not in law.params:
            raise LawError(f"law {law.name!r}: bounds/grid name {p!r}, not a parameter of {list(law.params)}")
    for p in law.log_params:
        if law.bound(p)[0] < 0:
            raise LawError(f"law {law.name!r}: log parameter {p!r} needs a lower bound >= 0, got {law.bound(p)}")


_REGISTRY: dict[str, Law] = {}


def register(law: Law) -> Law:
    """Add ``law`` to the registry and return it.

    Raises
    ------
    LawError
        If a law of that name is already registered.
    """
    if law.name in _REGISTRY:
        raise LawError(
            f"law {law.name!r} is already registered; pick another name "
            f"(registered laws: {', '.join(sorted(_REGISTRY))})"
        )
    _REGISTRY[law.name] = law
    return law


def get(name: str | Law) -> Law:
    """Return the law registered as ``name`` (a :class:`Law` is returned as is).

    Raises
    ------
    LawError
        If no law of that name is registered; the message lists the known laws.
    """
    if isinstance(name, Law):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise LawError(
            f"law {name!r} is not registered; known laws: {', '.join(sorted(_REGISTRY))} "
            "(add your own with laws.register(laws.from_function(...)))"
        ) from None


def names() -> list[str]:
    """Return the names of the registered laws, sorted."""
    return sorted(_REGISTRY)


def from_function(
    func: Callable[..., np.ndarray],
    name: str,
    inputs: Sequence[str],
    params: Sequence[str] | None = None,
    bounds: Mapping[str, Bounds] | None = None,
    grid: Grid | None = None,
    linear: Sequence[str] = (),
    log_params: Sequence[str] = (),
    positive_inputs: Sequence[str] = (),
    formula: str = "",
    outputs: Sequence[str] = ("y",),
    register_law: bool = False,
) -> Law:
    """Build a :class:`Law` from a plain numpy function ``func(*inputs, *params)``.

    Parameters not given are taken from the function signature (every argument
    that is not an input). Parameters without a grid start at 1.0.

    Examples
    --------
    >>> def expo(t, A, tau):
    ...     return A * np.exp(-t / tau)
    >>> law = from_function(expo, "expo", inputs=["t"], bounds={"tau": (0, None)})
    >>> law.params
    ('A', 'tau')
    """
    if params is None:
        params = [p for p in inspect.signature(func).parameters if p not in inputs]
    grid = dict(grid) if isinstance(grid, Mapping) else grid
    if grid is None:
        grid = {p: [1.0] for p in params if p not in linear}
    law = Law(
        name=name, func=func, inputs=tuple(inputs), params=tuple(params),
        bounds=dict(bounds or {}), grid=grid, linear=tuple(linear),
        log_params=tuple(log_params), positive_inputs=tuple(positive_inputs),
        outputs=tuple(outputs), formula=formula or f"{name}({', '.join(inputs)})",
    )
    return register(law) if register_law else law


def from_lmfit_model(model: Any, name: str | None = None, **kwargs: Any) -> Law:
    """Build a :class:`Law` from an ``lmfit.Model``.

    Independent variables become inputs; parameter hints (``value``, ``min``,
    ``max``) become the start and the bounds. ``kwargs`` go to :func:`from_function`.
    """
    hints = model.make_params()
    bounds = {p: (hints[p].min, hints[p].max) for p in model.param_names}
    grid = kwargs.pop("grid", None) or {
        p: [hints[p].value if np.isfinite(hints[p].value) else 1.0] for p in model.param_names
    }
    prefix = getattr(model, "prefix", "")

    def func(**kw: Any) -> np.ndarray:
        return model.func(**{k[len(prefix):] if k.startswith(prefix) else k: v for k, v in kw.items()})

    return from_function(
        func, name or model.name, inputs=model.independent_vars,
        params=model.param_names, bounds=bounds, grid=grid, **kwargs,
    )


# ---------------------------------------------------------------- built-in laws


def inverse_linear(L_ft: np.ndarray, c: float, s: float) -> np.ndarray:
    r"""Inverse-linear law between forgetting and fine-tuning loss (Kalajdzievski eq. 4).

    .. math:: L_f = s - c \, L_{ft}

    Examples
    --------
    >>> round(float(inverse_linear(0.7, c=1.7334, s=2.0481)), 5)
    0.83472
    """
    return s - c * np.asarray(L_ft, dtype=float)


def power_law(x: np.ndarray, s: float, c: float, alpha: float) -> np.ndarray:
    r"""Shifted power law in one variable.

    .. math:: y = s + c \, x^{-\alpha}

    Examples
    --------
    >>> float(power_law(100.0, s=1.0, c=2.0, alpha=0.5))
    1.2
    """
    return s + c * np.exp(-alpha * np.log(x))


def _power_law_grad(x, s, c, alpha):
    xa = np.exp(-alpha * np.log(x))
    one = np.ones_like(xa * s)
    return np.stack(np.broadcast_arrays(one, xa * one, -c * xa * np.log(x)))


def _kal_core(P, N, a, alpha, b, beta, rho):
    """Return the bracket X = (a/P)^alpha + (b/N)^beta and X^rho, computed in logs."""
    tp = np.exp(alpha * (np.log(a) - np.log(P)))
    tn = np.exp(beta * (np.log(b) - np.log(N)))
    X = tp + tn
    return tp, tn, X, np.exp(rho * np.log(X))


def kalajdzievski_ft(P, N, c, s, a, alpha, b, beta, rho) -> np.ndarray:
    r"""Fine-tuning loss as a shifted power law in parameters P and steps N (Kalajdzievski eq. 5).

    .. math:: L_{ft}(P, N) = c \left( (a/P)^{\alpha} + (b/N)^{\beta} \right)^{\rho} + s

    ``c``, ``a`` and ``b`` trade off exactly: scaling a by :math:`k^{1/\alpha}` and b by
    :math:`k^{1/\beta}` is undone by :math:`c\,k^{-\rho}`. The fitter therefore holds
    ``b`` at its start value (a gauge choice) and reports that it did.

    Examples
    --------
    >>> round(float(kalajdzievski_ft(2e7, 260, 0.002, 0.6126, 7e3, 0.0424, 72.9186, 0.1219, 7.6885)), 3)
    0.677
    """
    return c * _kal_core(P, N, a, alpha, b, beta, rho)[3] + s


def _kal_grad(P, N, c, a, alpha, b, beta, rho, sign):
    """d prediction / d (c, s, a, alpha, b, beta, rho) for  s + sign * c * X^rho."""
    tp, tn, X, Xr = _kal_core(P, N, a, alpha, b, beta, rho)
    k = sign * c * rho * Xr / X  # d pred / d X
    one = np.ones_like(Xr)
    parts = [
        sign * Xr, one, k * tp * alpha / a, k * tp * (np.log(a) - np.log(P)),
        k * tn * beta / b, k * tn * (np.log(b) - np.log(N)), sign * c * Xr * np.log(X),
    ]
    return np.stack(np.broadcast_arrays(*parts))


def _kalajdzievski_ft_grad(P, N, c, s, a, alpha, b, beta, rho):
    return _kal_grad(P, N, c, a, alpha, b, beta, rho, 1.0)


def kalajdzievski_forget(P, N, c_f, s_f, a_f, alpha_f, b_f, beta_f, rho) -> np.ndarray:
    r"""Forgetting loss as a shifted power law in P and N (Kalajdzievski eq. 6).

    .. math:: L_f(P, N) = s_f - c_f \left( (a_f/P)^{\alpha_f} + (b_f/N)^{\beta_f} \right)^{\rho}

    In the paper's constants, :math:`c_f = c_{f,ft} c_{ft}` and
    :math:`s_f = s_{f,ft} - c_{f,ft} s_{ft}`.
    """
    return s_f - c_f * _kal_core(P, N, a_f, alpha_f, b_f, beta_f, rho)[3]


def _kalajdzievski_forget_grad(P, N, c_f, s_f, a_f, alpha_f, b_f, beta_f, rho):
    return _kal_grad(P, N, c_f, a_f, alpha_f, b_f, beta_f, rho, -1.0)


def kalajdzievski_joint(P, N, c, s, a, alpha, b, beta, c_f, s_f, a_f, alpha_f, b_f, beta_f, rho):
    r"""Joint law of (L_ft, L_f) sharing the exponent rho; returns shape (..., 2, n).

    .. math::
        L_{ft} = c\,X_{ft}^{\rho} + s, \quad L_f = s_f - c_f\,X_f^{\rho}, \quad
        X_{ft} = (a/P)^{\alpha} + (b/N)^{\beta}, \; X_f = (a_f/P)^{\alpha_f} + (b_f/N)^{\beta_f}

    Where :math:`X_f \approx X_{ft}` (the paper's constants nearly agree),
    eliminating :math:`X^{\rho}` gives the inverse-linear law
    :math:`L_f = s_{f,ft} - c_{f,ft} L_{ft}` with :math:`c_{f,ft} = c_f / c` and
    :math:`s_{f,ft} = s_f + c_f s / c`.
    """
    ft = kalajdzievski_ft(P, N, c, s, a, alpha, b, beta, rho)
    fg = kalajdzievski_forget(P, N, c_f, s_f, a_f, alpha_f, b_f, beta_f, rho)
    ft, fg = np.broadcast_arrays(ft, fg)
    return np.stack([ft, fg], axis=-2 if ft.ndim else 0)


def _kalajdzievski_joint_grad(P, N, c, s, a, alpha, b, beta, c_f, s_f, a_f, alpha_f, b_f, beta_f, rho):
    g_ft = _kal_grad(P, N, c, a, alpha, b, beta, rho, 1.0)  # (7, ..., n)
    g_f = _kal_grad(P, N, c_f, a_f, alpha_f, b_f, beta_f, rho, -1.0)
    g_ft, g_f = np.broadcast_arrays(g_ft, g_f)
    zero = np.zeros_like(g_ft[0])
    rows = [np.stack([g_ft[i], zero], axis=-2) for i in range(6)]
    rows += [np.stack([zero, g_f[i]], axis=-2) for i in range(6)]
    rows.append(np.stack([g_ft[6], g_f[6]], axis=-2))
    return np.stack(rows)


def chinchilla(N, D, E, A, B, alpha, beta) -> np.ndarray:
    r"""Chinchilla loss in model size N and training tokens D (Hoffmann et al. 2022).

    .. math:: L(N, D) = E + \frac{A}{N^{\alpha}} + \frac{B}{D^{\beta}}

    Fitted in the log-sum-exp parametrisation
    :math:`\log L = \mathrm{LSE}(a - \alpha \log N,\; b - \beta \log D,\; e)`
    with :math:`a = \log A, b = \log B, e = \log E`.

    Examples
    --------
    >>> round(float(chinchilla(70e9, 1.4e12, 1.817, 482.0, 2085.4, 0.348, 0.366)), 3)
    1.973
    """
    return E + A * np.exp(-alpha * np.log(N)) + B * np.exp(-beta * np.log(D))


def _chinchilla_grad(N, D, E, A, B, alpha, beta):
    tn = np.exp(-alpha * np.log(N))
    td = np.exp(-beta * np.log(D))
    one = np.ones_like(tn * td * E)
    parts = [one, tn * one, td * one, -A * tn * np.log(N) * one, -B * td * np.log(D) * one]
    return np.stack(np.broadcast_arrays(*parts))


def _epoch_grid() -> dict[str, list[float]]:
    """The 4,500-start grid of Hoffmann et al. / Besiroglu et al. (in a, b, e, alpha, beta)."""
    return {
        "E": list(np.exp(np.arange(-1.0, 1.01, 0.5))),
        "A": list(np.exp(np.arange(0.0, 25.1, 5.0))),
        "B": list(np.exp(np.arange(0.0, 25.1, 5.0))),
        "alpha": list(np.arange(0.0, 2.01, 0.5)),
        "beta": list(np.arange(0.0, 2.01, 0.5)),
    }


_KAL_GRID = {
    "a": [1e3, 1e6], "alpha": [0.02, 0.05, 0.15, 0.5],
    "b": [50.0], "beta": [0.05, 0.12, 0.3, 0.8], "rho": [1.0, 3.0, 8.0],
}
_KAL_BOUNDS = {
    "a": (0.0, _INF), "alpha": (0.0, 5.0), "b": (0.0, _INF), "beta": (0.0, 5.0), "rho": (1e-3, 50.0),
}


def _suffixed(d: Mapping[str, Any], suffix: str) -> dict[str, Any]:
    return {(k if k == "rho" else k + suffix): v for k, v in d.items()}


register(Law(
    name="inverse_linear", func=inverse_linear, inputs=("L_ft",), params=("c", "s"),
    linear=("c", "s"), outputs=("forget_loss",),
    formula="L_f = s - c * L_ft", latex=r"L_f = s - c\,L_{ft}",
))
register(Law(
    name="power_law", func=power_law, inputs=("x",), params=("s", "c", "alpha"),
    bounds={"alpha": (0.0, 10.0)}, grid={"alpha": [0.05, 0.1, 0.2, 0.5, 1.0, 2.0]},
    linear=("s", "c"), positive_inputs=("x",), outputs=("y",), grad=_power_law_grad,
    formula="y = s + c * x^(-alpha)", latex=r"y = s + c\,x^{-\alpha}",
))
register(Law(
    name="kalajdzievski_ft", func=kalajdzievski_ft, inputs=("P", "N"),
    params=("c", "s", "a", "alpha", "b", "beta", "rho"),
    bounds={"c": (0.0, _INF), **_KAL_BOUNDS}, grid=_KAL_GRID, linear=("c", "s"),
    log_params=("c", "a", "b"), positive_inputs=("P", "N"), outputs=("ft_loss",), gauge=("b",),
    grad=_kalajdzievski_ft_grad,
    formula="L_ft = c * ((a/P)^alpha + (b/N)^beta)^rho + s",
    latex=r"L_{ft} = c\left((a/P)^{\alpha} + (b/N)^{\beta}\right)^{\rho} + s",
))
register(Law(
    name="kalajdzievski_forget", func=kalajdzievski_forget, inputs=("P", "N"),
    params=("c_f", "s_f", "a_f", "alpha_f", "b_f", "beta_f", "rho"),
    bounds={"c_f": (0.0, _INF), **_suffixed(_KAL_BOUNDS, "_f")}, grid=_suffixed(_KAL_GRID, "_f"),
    linear=("c_f", "s_f"), log_params=("c_f", "a_f", "b_f"), positive_inputs=("P", "N"),
    outputs=("forget_loss",), grad=_kalajdzievski_forget_grad, gauge=("b_f",),
    formula="L_f = s_f - c_f * ((a_f/P)^alpha_f + (b_f/N)^beta_f)^rho",
    latex=r"L_f = s_f - c_f\left((a_f/P)^{\alpha_f} + (b_f/N)^{\beta_f}\right)^{\rho}",
))
register(Law(
    name="kalajdzievski_joint", func=kalajdzievski_joint, inputs=("P", "N"),
    params=("c", "s", "a", "alpha", "b", "beta", "c_f", "s_f", "a_f", "alpha_f", "b_f", "beta_f", "rho"),
    bounds={"c": (0.0, _INF), "c_f": (0.0, _INF), **_KAL_BOUNDS, **_suffixed(_KAL_BOUNDS, "_f")},
    grid={"alpha": [0.03, 0.15], "beta": [0.1, 0.4], "alpha_f": [0.03, 0.15], "beta_f": [0.1, 0.4],
          "rho": [1.0, 3.0, 8.0], "a": [1e4], "b": [50.0], "a_f": [1e4], "b_f": [50.0]},
    linear=("c", "s", "c_f", "s_f"), log_params=("c", "a", "b", "c_f", "a_f", "b_f"),
    positive_inputs=("P", "N"), outputs=("ft_loss", "forget_loss"), grad=_kalajdzievski_joint_grad,
    gauge=("b", "b_f"),
    formula="L_ft = c*((a/P)^alpha + (b/N)^beta)^rho + s;  "
            "L_f = s_f - c_f*((a_f/P)^alpha_f + (b_f/N)^beta_f)^rho  (rho shared)",
    latex=r"L_{ft} = c X_{ft}^{\rho} + s,\; L_f = s_f - c_f X_f^{\rho}",
))
register(Law(
    name="chinchilla", func=chinchilla, inputs=("N", "D"), params=("E", "A", "B", "alpha", "beta"),
    bounds={"E": (0.0, _INF), "A": (0.0, _INF), "B": (0.0, _INF), "alpha": (0.0, 10.0), "beta": (0.0, 10.0)},
    grid=_epoch_grid, linear=("E", "A", "B"), log_params=("E", "A", "B"),
    positive_inputs=("N", "D"), outputs=("loss",), grad=_chinchilla_grad,
    formula="L = E + A / N^alpha + B / D^beta",
    latex=r"L = E + \frac{A}{N^{\alpha}} + \frac{B}{D^{\beta}}",
))
