"""The result of a fit: :class:`FitResult`, its predictions, reports and JSON form.

A result carries what a user asks next (as lmfit's ``ModelResult``): parameters with their
uncertainties, metrics, residuals, predictions, a text and an HTML report, a plot, and a JSON
round trip whose ``format_version`` is checked on loading.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FitDataError
from . import laws as _laws
from .fit_report import html_report, text_report
from .laws import Law, LawError

__all__ = ["FitResult", "FORMAT_VERSION", "SUPPORTED_FORMAT_VERSIONS"]

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)


@dataclass
class FitResult:
    """The outcome of a fit: parameters, uncertainties, metrics and diagnostics.

    Attributes
    ----------
    law_name : str
        Registry name of the law.
    params, stderr : dict
        Parameter name -> best-fit value / standard error (bootstrap standard
        deviation when bootstrapped, else the Gauss-Newton approximation).
    ci : dict
        Parameter name -> (low, high) at ``ci_level`` (bootstrap percentiles when
        bootstrapped, else a normal approximation on the optimiser's scale, i.e.
        in log space for positive scale parameters).
    metrics : dict
        In-sample metrics (``r2``, ``rmse``, ``mae``, ``are``, ``aic``, ``bic``,
        ``loglik``, ``objective``, ``n``, ``rank_corr``) and, with a holdout,
        ``holdout`` (``are``, ``mae``, ``r2``, ``n``, ``spec``).
    warnings : list of str
        Identifiability and convergence warnings.
    correlation : ndarray, shape (p, p)
        Parameter correlations (on the optimiser's scale: log for positive
        scale parameters).
    draws : ndarray, shape (n_boot, p)
        Bootstrap parameter draws (empty when ``bootstrap=0``).
    inputs, y_obs, fitted : data the law was fitted on (``y_obs``/``fitted`` stacked
        output-major for joint laws).
    """

    law_name: str
    params: dict[str, float]
    stderr: dict[str, float]
    ci: dict[str, tuple[float, float]]
    metrics: dict[str, Any]
    warnings: list[str]
    correlation: np.ndarray
    draws: np.ndarray
    inputs: dict[str, np.ndarray]
    y_obs: np.ndarray
    fitted: np.ndarray
    loss: str = "huber_log"
    delta: float = 1e-3
    ci_level: float = 0.95
    x: dict[str, str] = field(default_factory=dict)
    y: tuple[str, ...] = ()
    start: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    _law: Law | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------ access
    @property
    def law(self) -> Law:
        """The :class:`~forgetting_laws.analyse.laws.Law` (looked up by name after loading JSON)."""
        if self._law is None:
            self._law = _laws.get(self.law_name)
        return self._law

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.params)

    @property
    def residuals(self) -> np.ndarray:
        """Observed minus fitted, on the data scale."""
        return self.y_obs - self.fitted

    # ------------------------------------------------------------ prediction
    def predict(self, **inputs: Any) -> np.ndarray:
        """Evaluate the fitted law at ``inputs`` (the law's input names).

        Examples
        --------
        >>> res.predict(N=70e9, D=1.4e12)  # doctest: +SKIP
        """
        self._check_inputs(inputs)
        return self.law(**{k: np.asarray(v, dtype=float) for k, v in inputs.items()}, **self.params)

    def predict_interval(self, level: float = 0.95, **inputs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of the prediction over the bootstrap draws.

        Returns
        -------
        (low, high) : arrays shaped like :meth:`predict`'s output.
        """
        if self.draws.size == 0:
            raise FitDataError("predict_interval needs bootstrap draws; this fit has bootstrap=0. "
                               "Refit with bootstrap=1000 (or any N > 0).")
        if not 0 < level < 1:
            raise FitDataError(f"level={level!r} must lie in (0, 1), e.g. 0.95")
        preds = self._predict_draws(inputs)
        q = 50 * (1 - level)
        return np.percentile(preds, q, axis=0), np.percentile(preds, 100 - q, axis=0)

    def _predict_draws(self, inputs: Mapping[str, Any]) -> np.ndarray:
        self._check_inputs(inputs)
        arrs = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in inputs.items()}
        kw = {p: self.draws[:, [j]] for j, p in enumerate(self.params)}
        if self.law.n_outputs > 1:
            kw = {p: v[:, :, None] for p, v in kw.items()}
        out = np.asarray(self.law(**arrs, **kw), dtype=float)
        shape = np.shape(self.predict(**inputs))
        return out.reshape((self.draws.shape[0],) + shape)

    def _check_inputs(self, inputs: Mapping[str, Any]) -> None:
        missing = [i for i in self.law.inputs if i not in inputs]
        extra = [i for i in inputs if i not in self.law.inputs]
        if missing or extra:
            raise FitDataError(
                f"law {self.law_name!r} takes inputs {list(self.law.inputs)}; "
                f"missing {missing}, unexpected {extra}"
            )

    # ------------------------------------------------------------ lmfit / reports
    def to_lmfit(self) -> Any:
        """The parameters as ``lmfit.Parameters`` (values, bounds, stderr, correlations)."""
        import lmfit

        pars = lmfit.Parameters()
        for j, p in enumerate(self.params):
            lo, hi = self.law.bound(p) if self._law_available() else (-np.inf, np.inf)
            pars.add(p, value=self.params[p], min=lo, max=hi)
            pars[p].stderr = self.stderr.get(p)
            pars[p].correl = {q: float(self.correlation[j, k]) for k, q in enumerate(self.params) if q != p}
        return pars

    def _law_available(self) -> bool:
        try:
            self.law
        except LawError:
            return False
        return True

    def report(self, min_correl: float = 0.3) -> str:
        """A text report in the style of ``lmfit.fit_report``."""
        return text_report(self, min_correl)

    def _repr_html_(self) -> str:
        return html_report(self)

    def __str__(self) -> str:
        return self.report()

    def plot(self, ax: Any = None) -> Any:
        """Observed against fitted values, with the identity line. Returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 4.5))
        n_out = len(self.y) if self.y else (self.law.n_outputs if self._law_available() else 1)
        labels = list(self.y) or [f"output {i}" for i in range(n_out)]
        for obs, fit_, label in zip(np.split(self.y_obs, n_out), np.split(self.fitted, n_out), labels):
            ax.scatter(fit_, obs, s=12, alpha=0.7, label=label)
        lo, hi = np.nanmin(self.y_obs), np.nanmax(self.y_obs)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = fitted")
        ax.set_xlabel("fitted")
        ax.set_ylabel("observed")
        ax.set_title(f"{self.law_name} (R$^2$ = {self.metrics.get('r2', float('nan')):.4f})")
        ax.legend(fontsize="small")
        return ax

    # ------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``format_version`` included)."""
        return _jsonable({
            "format_version": FORMAT_VERSION, "law_name": self.law_name, "loss": self.loss,
            "delta": self.delta, "ci_level": self.ci_level, "params": self.params,
            "stderr": self.stderr, "ci": {k: list(v) for k, v in self.ci.items()},
            "metrics": self.metrics, "warnings": self.warnings,
            "correlation": self.correlation.tolist(), "draws": self.draws.tolist(),
            "inputs": {k: np.asarray(v).tolist() for k, v in self.inputs.items()},
            "y_obs": self.y_obs.tolist(), "fitted": self.fitted.tolist(),
            "x": self.x, "y": list(self.y), "start": self.start, "options": self.options,
        })

    def to_json(self, path: str | Path | None = None, indent: int | None = 1) -> str:
        """Serialise to JSON; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source: str | Path, law: Law | None = None) -> FitResult:
        """Load a result saved by :meth:`to_json` (a JSON string or a file path).

        ``law`` supplies a user law that is not in the registry.
        """
        text = str(source)
        if not text.lstrip().startswith("{"):
            text = Path(source).read_text()
        return cls.from_dict(json.loads(text), law=law)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], law: Law | None = None) -> FitResult:
        version = d.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise FitDataError(
                f"format_version={version!r} is not supported (supported: {SUPPORTED_FORMAT_VERSIONS}); "
                "upgrade forgetting-laws to read this file"
            )
        names = list(d["params"])
        return cls(
            law_name=d["law_name"], params=_floats(d["params"]), stderr=_floats(d["stderr"]),
            ci={k: tuple(_f(v) for v in d["ci"][k]) for k in d["ci"]}, metrics=d["metrics"],
            warnings=list(d["warnings"]), correlation=_array(d["correlation"], (len(names), len(names))),
            draws=_array(d["draws"], (0, len(names))),
            inputs={k: _array(v) for k, v in d["inputs"].items()}, y_obs=_array(d["y_obs"]),
            fitted=_array(d["fitted"]), loss=d["loss"], delta=d["delta"], ci_level=d["ci_level"],
            x=dict(d.get("x", {})), y=tuple(d.get("y", ())), start=d.get("start", {}),
            options=d.get("options", {}), format_version=FORMAT_VERSION, _law=law,
        )


def _f(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _floats(d: Mapping[str, Any]) -> dict[str, float]:
    return {k: _f(v) for k, v in d.items()}


def _array(v: Any, empty_shape: tuple[int, ...] = (0,)) -> np.ndarray:
    a = np.array([[_f(x) for x in row] for row in v] if v and isinstance(v[0], list) else [_f(x) for x in v])
    return a if a.size else np.zeros(empty_shape)


def _jsonable(obj: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones, recursively."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


