"""The result of a fit: :class:`FitResult`, its predictions, intervals, reports and JSON form.

A result carries what a user asks next (as lmfit's ``ModelResult``): parameters with their
uncertainties, metrics, residuals, predictions with a confidence band (the mean curve) and a
prediction interval (a new measurement), a text and an HTML report, a plot, and a JSON round
trip whose ``format_version`` is checked on loading.
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
from .policy import AnalysisPolicy
from .uncertainty import NoiseModel, mean_band, prediction_band

__all__ = ["FitResult", "FORMAT_VERSION", "SUPPORTED_FORMAT_VERSIONS"]

#: 2: the analysis policy, the covariance, the noise model and the interval method are saved.
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)


@dataclass
class FitResult:
    """The outcome of a fit: parameters, uncertainties, metrics and diagnostics.

    Attributes
    ----------
    law_name : str
        Registry name of the law.
    params : dict
        Parameter name -> best-fit value (always a number, so :meth:`predict` works; see
        ``unidentified`` for the parameters the data do not pin down).
    stderr, ci : dict
        Parameter name -> standard error / (low, high) at ``ci_level``, by ``interval_method``.
    interval_method, interval_note : str
        ``"cluster bootstrap"`` (percentiles of refits on resampled runs), ``"asymptotic"``
        (Student-t intervals from the covariance, used below ``policy.min_clusters`` runs) or
        ``"none"``; the note says what they rest on, or why there are none.
    unidentified : dict
        Parameter name -> why the data do not pin it down.
    metrics : dict
        In-sample metrics (``r2``, ``rmse``, ``mae``, ``are``, ``aic``, ``bic``, ``loglik``,
        ``objective``, ``n``, ``rank_corr``), per output in ``outputs`` (for a joint law the
        top-level ``r2`` is the smallest per-output one), and with a holdout ``holdout``
        (``are``, ``mae``, ``r2``, ``n``, ``spec``, ``coverage`` of the prediction interval).
    warnings : list of str
        Identifiability, interval and convergence warnings.
    correlation, covariance : ndarray, shape (p, p)
        Parameter correlations and covariance on the optimiser's scale (log for positive
        scale parameters).
    draws : ndarray, shape (n_boot, p)
        Bootstrap parameter draws (empty without a cluster bootstrap).
    noise : NoiseModel or None
        Scatter of the measurements around the law (``noise_note`` says why it is missing).
    policy : AnalysisPolicy
        The analysis policy the fit was made under.
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
    policy: AnalysisPolicy = field(default_factory=AnalysisPolicy)
    covariance: np.ndarray | None = None
    noise: NoiseModel | None = None
    noise_note: str = ""
    interval_method: str = "none"
    interval_note: str = ""
    unidentified: dict[str, str] = field(default_factory=dict)
    x: dict[str, str] = field(default_factory=dict)
    y: tuple[str, ...] = ()
    start: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION  # of the file it was loaded from; saving writes FORMAT_VERSION
    _law: Law | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------ access
    @property
    def law(self) -> Law:
        """The :class:`~forgetting_laws.analyse.laws.Law` (looked up by name after loading JSON)."""
        if self._law is None:
            self._law = _laws.get(self.law_name)
        return self._law

    @property
    def loss(self) -> str:
        return self.policy.loss

    @property
    def delta(self) -> float:
        return self.policy.delta

    @property
    def ci_level(self) -> float:
        return self.policy.ci_level

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

    def confidence_band(self, level: float | None = None, **inputs: Any) -> tuple[np.ndarray, np.ndarray]:
        r"""Interval for the law's **mean curve** at ``inputs``: parameter uncertainty only.

        Bootstrap percentiles of the refitted curves, or (asymptotic intervals) the delta method
        :math:`g(\hat f) \pm t_\nu \sqrt{j^\top \Sigma_u j}` on the objective's scale :math:`g`
        (log y for the log objectives). It narrows as data accumulate and does *not* cover new
        measurements: use :meth:`prediction_interval` for those.

        Returns
        -------
        (low, high) : arrays shaped like :meth:`predict`'s output.
        """
        centre, lo, hi = self._band(level, inputs)
        return self._from_scale(lo), self._from_scale(hi)

    def prediction_interval(self, level: float | None = None, **inputs: Any) -> tuple[np.ndarray, np.ndarray]:
        r"""Interval for a **new measurement** at ``inputs``: the confidence band widened by the
        residual noise, :math:`g \pm \sqrt{h^2 + (t_\nu \hat\sigma)^2}` on the objective's scale,
        with :math:`\hat\sigma` and :math:`\nu` from the noise model (rows of a run correlate,
        so :math:`\nu` counts independent observations, not rows).

        Held-out coverage (``metrics["holdout"]["coverage"]``) is measured with this interval.

        Returns
        -------
        (low, high) : arrays shaped like :meth:`predict`'s output.
        """
        if self.noise is None:
            raise FitDataError(f"this fit has no prediction interval: {self.noise_note or 'no noise model'}")
        level = self._level(level)
        centre, lo, hi = self._band(level, inputs)
        lo, hi = prediction_band(centre, lo, hi, self.noise, level, self.law.n_outputs)
        return self._from_scale(lo), self._from_scale(hi)

    def _band(self, level: float | None, inputs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        self._check_inputs(inputs)
        if self.interval_method == "none":
            raise FitDataError(f"this fit has no intervals: {self.interval_note}")
        arrays = {k: np.asarray(v, dtype=float) for k, v in inputs.items()}
        theta = np.array([self.params[p] for p in self.law.params])
        return mean_band(self.law, theta, arrays, self._level(level), self._log_scale,
                         self.draws if self.draws.size else None, self.covariance,
                         self.noise.dof if self.noise else None)

    @property
    def _log_scale(self) -> bool:
        return self.loss in ("huber_log", "mse_log")

    def _from_scale(self, a: np.ndarray) -> np.ndarray:
        return np.exp(a) if self._log_scale else a

    def _level(self, level: float | None) -> float:
        level = self.ci_level if level is None else level
        if not 0 < level < 1:
            raise FitDataError(f"level={level!r} must lie in (0, 1), e.g. 0.95")
        return level

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
        cov = self.covariance if self.covariance is not None else np.full((len(self.params),) * 2, np.nan)
        return _jsonable({
            "format_version": FORMAT_VERSION, "law_name": self.law_name, "policy": self.policy.to_dict(),
            "params": self.params, "stderr": self.stderr, "ci": {k: list(v) for k, v in self.ci.items()},
            "interval_method": self.interval_method, "interval_note": self.interval_note,
            "unidentified": self.unidentified, "metrics": self.metrics, "warnings": self.warnings,
            "correlation": self.correlation.tolist(), "covariance": cov.tolist(), "draws": self.draws.tolist(),
            "noise": self.noise.to_dict() if self.noise else None, "noise_note": self.noise_note,
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
        p = len(d["params"])
        extra = _version_2_fields(d) if version == 2 else _version_1_fields(d)
        return cls(
            law_name=d["law_name"], params=_floats(d["params"]), stderr=_floats(d["stderr"]),
            ci={k: tuple(_f(v) for v in d["ci"][k]) for k in d["ci"]}, metrics=d["metrics"],
            warnings=list(d["warnings"]), correlation=_array(d["correlation"], (p, p)),
            draws=_array(d["draws"], (0, p)), inputs={k: _array(v) for k, v in d["inputs"].items()},
            y_obs=_array(d["y_obs"]), fitted=_array(d["fitted"]), x=dict(d.get("x", {})),
            y=tuple(d.get("y", ())), start=d.get("start", {}), options=d.get("options", {}),
            format_version=version, _law=law, **extra,
        )


def _version_2_fields(d: Mapping[str, Any]) -> dict[str, Any]:
    p = len(d["params"])
    return {
        "policy": AnalysisPolicy.from_dict(d["policy"]), "covariance": _array(d["covariance"], (p, p)),
        "noise": NoiseModel.from_dict(d["noise"]) if d.get("noise") else None, "noise_note": d["noise_note"],
        "interval_method": d["interval_method"], "interval_note": d["interval_note"],
        "unidentified": dict(d.get("unidentified", {})),
    }


def _version_1_fields(d: Mapping[str, Any]) -> dict[str, Any]:
    """Format 1 kept the loss, delta and level beside the options, and no noise model."""
    opts = d.get("options", {})
    policy = AnalysisPolicy(loss=d["loss"], delta=d["delta"], ci_level=d["ci_level"],
                            bootstrap=int(opts.get("bootstrap", 0)), seed=int(opts.get("seed", 0)),
                            min_step=int(opts.get("min_step", 0) or 0))
    boot = bool(d["draws"])
    return {
        "policy": policy, "noise": None,
        "noise_note": "saved in format 1, which holds no noise model; refit for prediction intervals",
        "interval_method": "cluster bootstrap" if boot else "none",
        "interval_note": "saved in format 1" if boot else "saved in format 1 without bootstrap draws",
    }


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
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj
