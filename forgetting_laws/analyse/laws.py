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
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..registry import Registry

__all__ = [
    "Law",
    "LawError",
    "register",
    "get",
    "names",
    "from_function",
    "default_grid",
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
    rescale : callable, optional
        ``rescale(factors, **params) -> dict``: the parameters that give the same
        predictions when each positive input ``i`` is divided by ``factors[i]``,
        i.e. :math:`f(x / k; \theta') = f(x; \theta)`. With it the fitter works on
        inputs of order one (divided by their geometric mean), so a law lands on
        the same optimum whatever the units of its inputs (FLOPs or units of
        1e16). It must map the parameters' bounds onto themselves (0 and
        infinity stay put).
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
    rescale: Callable[..., dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        _check_law_fields(self)

    def __call__(self, **kwargs: Any) -> np.ndarray:
        """Evaluate the law: ``law(**inputs, **params)``."""
        return self.func(**kwargs)

    def bound(self, param: str) -> Bounds:
        """Return ``(low, high)`` for ``param`` (infinite where unbounded)."""
        low, high = self.bounds.get(param, (-_INF, _INF))
        return (-_INF if low is None else float(low), _INF if high is None else float(high))

    def start_grid(self, skip: Sequence[str] = ()) -> tuple[tuple[str, ...], np.ndarray]:
        """Return the gridded parameter names and the start grid, shape (G, len(names)); parameters
        in ``skip`` are left out of the product."""
        grid = self.grid() if callable(self.grid) else self.grid
        gnames = tuple(p for p in self.params if p in grid and p not in skip)
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


def _same_law(old: Law, new: Law) -> bool:
    return _definition(old) == _definition(new)


LAWS: Registry[Law] = Registry("law", same=_same_law)


def register(law: Law) -> Law:
    """Add ``law`` to the registry and return it.

    Registering a law again under its own name with the same definition (a re-run notebook
    cell, which builds a new function object from the same source) replaces the old entry.

    Raises
    ------
    LawError
        If a *different* law is already registered under that name.
    """
    try:
        return LAWS.register(law.name, law)
    except ValueError:
        raise LawError(
            f"law {law.name!r} is already registered with a different definition "
            f"({_difference(LAWS[law.name], law)}); pick another name "
            f"(registered laws: {', '.join(LAWS.names())})"
        ) from None


def _code(func: Any) -> tuple:
    """What identifies a function's definition: its code and constants, and those of the
    functions it closes over (an lmfit model's function), not its identity."""
    func = getattr(func, "__wrapped__", func)
    code = getattr(func, "__code__", None)
    if code is None:
        return (repr(func),)
    inner = [getattr(c.cell_contents, "func", c.cell_contents) for c in func.__closure__ or ()]
    return (code.co_code, code.co_consts, code.co_names, code.co_varnames,
            tuple(_code(f) if callable(f) else type(f).__name__ for f in inner))


def _definition(law: Law) -> dict[str, Any]:
    grid = "callable" if callable(law.grid) else {k: tuple(map(float, v)) for k, v in law.grid.items()}
    return {
        "function": _code(law.func), "inputs": law.inputs, "params": law.params,
        "bounds": {p: law.bound(p) for p in law.params}, "grid": grid, "linear": law.linear,
        "log_params": law.log_params, "positive_inputs": law.positive_inputs, "outputs": law.outputs,
        "formula": law.formula, "gauge": law.gauge,
    }


def _difference(a: Law, b: Law) -> str:
    da, db = _definition(a), _definition(b)
    return "differs in " + ", ".join(k for k in da if da[k] != db[k])


def get(name: str | Law) -> Law:
    """Return the law registered as ``name`` (a :class:`Law` is returned as is).

    Raises
    ------
    LawError
        If no law of that name is registered; the message lists the known laws.
    """
    if isinstance(name, Law):
        return name
    if not isinstance(name, str) or name not in LAWS:
        raise LawError(
            f"law {name!r} is not registered; known laws: {', '.join(LAWS.names())} "
            "(add your own with laws.register(laws.from_function(...)))"
        )
    return LAWS[name]


def names() -> list[str]:
    """Return the names of the registered laws, sorted."""
    return LAWS.names()


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
    rescale: Callable[..., dict[str, Any]] | None = None,
) -> Law:
    """Build a :class:`Law` from a plain numpy function ``func(*inputs, *params)``.

    Parameters not given are taken from the function signature (every argument that is not
    an input). Without ``grid``, :func:`default_grid` builds a start grid: log-spaced values
    for positive parameters (exponents and scales), evenly spaced ones inside finite bounds,
    and both signs for unbounded ones; parameters in ``linear`` are solved, not gridded.

    A function written for scalars (``float(alpha)``, ``math.exp``) is evaluated one
    parameter set, or one element, at a time, with a warning that says how to vectorise it;
    one that cannot be evaluated at all at its start values is refused.

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
    bounds = dict(bounds or {})
    grid = dict(grid) if isinstance(grid, Mapping) else grid
    if grid is None:
        grid = default_grid(params, bounds, linear, log_params)
    law = Law(
        name=name, func=func, inputs=tuple(inputs), params=tuple(params),
        bounds=bounds, grid=grid, linear=tuple(linear),
        log_params=tuple(log_params), positive_inputs=tuple(positive_inputs),
        outputs=tuple(outputs), formula=formula or f"{name}({', '.join(inputs)})", rescale=rescale,
    )
    law = _vectorised(law)
    return register(law) if register_law else law


#: Most start points a default grid holds (the Cartesian product over the gridded parameters).
DEFAULT_GRID_BUDGET = 2000


def default_grid(params: Sequence[str], bounds: Mapping[str, Bounds], linear: Sequence[str] = (),
                 log_params: Sequence[str] = (), budget: int = DEFAULT_GRID_BUDGET) -> dict[str, list[float]]:
    """A start grid for a law that gives none: every parameter not in ``linear`` gets ``n`` values,
    with ``n`` the largest count (2 to 7) whose product over the parameters stays within ``budget``.

    * positive parameters (in ``log_params``, or with a lower bound >= 0): log-spaced over
      their bounds, clipped to [1e-3, 1e3] (exponents and scales);
    * parameters with two finite bounds: evenly spaced inside them;
    * unbounded parameters: evenly spaced over [-2, 2] (both signs).

    Examples
    --------
    >>> default_grid(["A", "tau"], {"tau": (0, None)}, linear=["A"])["tau"][:2]
    [0.001, 0.01]
    """
    free = [p for p in params if p not in linear]
    n = max(2, min(7, int(budget ** (1 / len(free))))) if free else 0
    return {p: _grid_values(p, bounds.get(p, (None, None)), p in log_params, n) for p in free}


def _grid_values(p: str, bound: Bounds, log: bool, n: int) -> list[float]:
    lo = -_INF if bound[0] is None else float(bound[0])
    hi = _INF if bound[1] is None else float(bound[1])
    if log or lo >= 0:
        a, b = max(lo, 1e-3), min(hi, 1e3)
        if not a < b:
            raise LawError(f"parameter {p!r} has bounds {bound}, which leave no room for a start grid; "
                           "widen them or give grid=")
        values = np.geomspace(a, b, n) if a > 0 else np.linspace(a, b, n)
        if np.isfinite(hi) and b == hi and n > 2:  # a start on the upper bound cannot move up
            values = np.geomspace(a, b, n + 1)[:-1]
    elif np.isfinite(lo) and np.isfinite(hi):
        values = np.linspace(lo, hi, n + 2)[1:-1]
    else:
        values = np.linspace(max(lo, -2.0), min(hi, 2.0), n)
    return [float(f"{v:.6g}") for v in values]


def _vectorised(law: Law) -> Law:
    """``law`` itself if its function takes arrays of parameter sets; else a law whose function
    loops over parameter sets (or elements), with a warning. Refuses a function that fails even
    on scalars."""
    try:
        _probe(law.func, law, batch=True)
        return law
    except (TypeError, ValueError) as err:
        first = err
    for wrap, how in ((_loop_parameter_sets, "one parameter set at a time"),
                      (_loop_elements, "one element at a time")):
        try:
            _probe(wrap(law.func), law, batch=True)
        except (TypeError, ValueError):
            continue
        warnings.warn(
            f"law {law.name!r} does not take numpy arrays ({type(first).__name__}: {first}); it will be "
            f"evaluated {how}, which is slow. Write it with numpy operations (np.exp, np.log, **) "
            "instead of float(), int() or math.* to fit it fast", stacklevel=3)
        return replace(law, func=wrap(law.func))
    raise LawError(
        f"law {law.name!r} cannot be evaluated at its start values ({type(first).__name__}: {first}); "
        "it must accept numpy arrays for its inputs and parameters: use np.exp, np.log and ** "
        "instead of math.* or float()") from None


def _probe(func: Callable[..., Any], law: Law, batch: bool) -> None:
    """Call ``func`` on 3 positive input values and 2 parameter sets taken from the start grid."""
    gnames, G = law.start_grid()
    start = {p: 1.0 for p in law.params} | dict(zip(gnames, G[0])) if G.size else {p: 1.0 for p in law.params}
    kw = {p: np.array([[v], [v]]) if batch else v for p, v in start.items()}
    with np.errstate(all="ignore"):
        np.asarray(func(**{i: np.array([1.5, 2.0, 3.0]) for i in law.inputs}, **kw), dtype=float)


def _loop_parameter_sets(func: Callable[..., Any]) -> Callable[..., np.ndarray]:
    def looped(**kw: Any) -> np.ndarray:
        arrays = {k: np.asarray(v, dtype=float) for k, v in kw.items()}
        sets = max((a.shape[0] for a in arrays.values() if a.ndim == 2), default=0)
        if not sets:
            return np.asarray(func(**kw), dtype=float)
        scalar = lambda a, b: float(a[b if a.shape[0] > 1 else 0, 0]) if a.ndim == 2 else a  # noqa: E731
        return np.array([np.asarray(func(**{k: scalar(a, b) for k, a in arrays.items()}), dtype=float)
                         for b in range(sets)])
    looped.__wrapped__ = func
    return looped


def _loop_elements(func: Callable[..., Any]) -> Callable[..., np.ndarray]:
    element = np.vectorize(lambda **kw: float(func(**kw)), otypes=[float])

    def looped(**kw: Any) -> np.ndarray:
        return element(**kw)
    looped.__wrapped__ = func
    return looped


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


def _power_law_rescale(k, s, c, alpha):
    return {"s": s, "c": c * np.exp(-alpha * np.log(k["x"])), "alpha": alpha}


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


def _chinchilla_rescale(k, E, A, B, alpha, beta):
    return {"E": E, "A": A * np.exp(-alpha * np.log(k["N"])), "B": B * np.exp(-beta * np.log(k["D"])),
            "alpha": alpha, "beta": beta}


def _kal_rescale(k, **params):
    """(a/P)^alpha and (b/N)^beta are unchanged when P, N and the scales a, b are divided alike."""
    return {p: v / k["P"] if p in ("a", "a_f") else v / k["N"] if p in ("b", "b_f") else v
            for p, v in params.items()}


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
    rescale=_power_law_rescale,
    formula="y = s + c * x^(-alpha)", latex=r"y = s + c\,x^{-\alpha}",
))
register(Law(
    name="kalajdzievski_ft", func=kalajdzievski_ft, inputs=("P", "N"),
    params=("c", "s", "a", "alpha", "b", "beta", "rho"),
    bounds={"c": (0.0, _INF), **_KAL_BOUNDS}, grid=_KAL_GRID, linear=("c", "s"),
    log_params=("c", "a", "b"), positive_inputs=("P", "N"), outputs=("ft_loss",), gauge=("b",),
    grad=_kalajdzievski_ft_grad, rescale=_kal_rescale,
    formula="L_ft = c * ((a/P)^alpha + (b/N)^beta)^rho + s",
    latex=r"L_{ft} = c\left((a/P)^{\alpha} + (b/N)^{\beta}\right)^{\rho} + s",
))
register(Law(
    name="kalajdzievski_forget", func=kalajdzievski_forget, inputs=("P", "N"),
    params=("c_f", "s_f", "a_f", "alpha_f", "b_f", "beta_f", "rho"),
    bounds={"c_f": (0.0, _INF), **_suffixed(_KAL_BOUNDS, "_f")}, grid=_suffixed(_KAL_GRID, "_f"),
    linear=("c_f", "s_f"), log_params=("c_f", "a_f", "b_f"), positive_inputs=("P", "N"),
    outputs=("forget_loss",), grad=_kalajdzievski_forget_grad, gauge=("b_f",), rescale=_kal_rescale,
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
    gauge=("b", "b_f"), rescale=_kal_rescale,
    formula="L_ft = c*((a/P)^alpha + (b/N)^beta)^rho + s;  "
            "L_f = s_f - c_f*((a_f/P)^alpha_f + (b_f/N)^beta_f)^rho  (rho shared)",
    latex=r"L_{ft} = c X_{ft}^{\rho} + s,\; L_f = s_f - c_f X_f^{\rho}",
))
register(Law(
    name="chinchilla", func=chinchilla, inputs=("N", "D"), params=("E", "A", "B", "alpha", "beta"),
    bounds={"E": (0.0, _INF), "A": (0.0, _INF), "B": (0.0, _INF), "alpha": (0.0, 10.0), "beta": (0.0, 10.0)},
    grid=_epoch_grid, linear=("E", "A", "B"), log_params=("A", "B"),
    positive_inputs=("N", "D"), outputs=("loss",), grad=_chinchilla_grad, rescale=_chinchilla_rescale,
    formula="L = E + A / N^alpha + B / D^beta",
    latex=r"L = E + \frac{A}{N^{\alpha}} + \frac{B}{D^{\beta}}",
))
