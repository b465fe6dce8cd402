"""The analysis policy: every default of the analysing half, in one place.

``fit()``, ``fit_sweep()``, ``compare()``, the CLI's ``fit``, ``figures``, ``report``,
``compare`` and ``demo`` (their option defaults come from here), the ``analysis/`` scripts and
the notebooks all start from :data:`DEFAULT_POLICY`, so one runs folder gives one answer
whichever way it is analysed. Every :class:`~forgetting_laws.analyse.result.FitResult` records
the policy it was fitted under, and its report prints it.

Example
-------
>>> from dataclasses import replace
>>> policy = replace(DEFAULT_POLICY, bootstrap=1000)
>>> policy.describe()
'steps >= 1, loss huber_log (delta 0.001), bootstrap 1000 resamples of runs when there are >= 5 runs, 95% intervals, seed 0'
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from ..errors import FitDataError

__all__ = ["AnalysisPolicy", "DEFAULT_POLICY", "LOSSES", "add_policy_arguments", "policy_from_args"]

LOSSES = ("huber_log", "mse", "mse_log")


@dataclass(frozen=True)
class AnalysisPolicy:
    """How runs are analysed: which rows are fitted, the objective, the intervals.

    Attributes
    ----------
    min_step : int
        Rows with ``step < min_step`` are left out of every fit (where a ``step`` column
        exists). 1 leaves out only step 0, where a law in the update steps N (``N^-beta``) is
        infinite; raise it to leave out an early transient, as Kalajdzievski (2024) leaves
        out the first 50 of 260 steps.
    loss : {"huber_log", "mse", "mse_log"}
        The objective: Huber on log residuals (Chinchilla approach 3), least squares, or
        least squares on log values.
    delta : float
        Huber threshold, on log residuals.
    bootstrap : int
        Resamples of whole runs for the parameter intervals (0: none). Used only with at
        least ``min_clusters`` runs; with fewer, intervals are asymptotic and say so. Each
        resample refits the law (seconds for the P, N laws), so the default is modest; raise it
        (``--bootstrap 1000``) for numbers to publish.
    min_clusters : int
        Fewest independent units (runs) a cluster bootstrap resamples.
    ci_level : float
        Level of every interval (parameters, bands, predictions).
    seed : int
        Seed of the bootstrap.
    n_jobs : int
        Processes for the bootstrap refits; the results do not depend on it.
    """

    min_step: int = 1
    loss: Literal["huber_log", "mse", "mse_log"] = "huber_log"
    delta: float = 1e-3
    bootstrap: int = 200
    min_clusters: int = 5
    ci_level: float = 0.95
    seed: int = 0
    n_jobs: int = 1

    def __post_init__(self) -> None:
        checks = [
            (self.loss in LOSSES, f"loss={self.loss!r} is not supported; choose one of {', '.join(LOSSES)}"),
            (self.delta > 0, f"delta={self.delta!r} must be > 0 (the Huber threshold, e.g. 1e-3)"),
            (_whole(self.bootstrap) and self.bootstrap >= 0,
             f"bootstrap={self.bootstrap!r} must be an integer >= 0 (0 skips the bootstrap)"),
            (_whole(self.min_step) and self.min_step >= 0, f"min_step={self.min_step!r} must be an integer >= 0"),
            (_whole(self.min_clusters) and self.min_clusters >= 2,
             f"min_clusters={self.min_clusters!r} must be an integer >= 2"),
            (0 < self.ci_level < 1, f"ci_level={self.ci_level!r} must lie in (0, 1), e.g. 0.95"),
            (_whole(self.n_jobs) and self.n_jobs >= 1, f"n_jobs={self.n_jobs!r} must be an integer >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise FitDataError(message)

    def updated(self, **changes: Any) -> AnalysisPolicy:
        """A copy with ``changes`` (``None`` values ignored); unknown names are refused."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise FitDataError(f"{unknown} are not analysis policy fields; known fields: {sorted(known)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def describe(self) -> str:
        """One line for reports."""
        boot = (f"bootstrap {self.bootstrap} resamples of runs when there are >= {self.min_clusters} runs"
                if self.bootstrap else "no bootstrap")
        loss = self.loss + (f" (delta {self.delta:g})" if self.loss == "huber_log" else "")
        return f"steps >= {self.min_step}, loss {loss}, {boot}, {self.ci_level:.0%} intervals, seed {self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnalysisPolicy:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _whole(v: Any) -> bool:
    return isinstance(v, int) or (isinstance(v, float) and v.is_integer())


#: The defaults of the whole analysing half.
DEFAULT_POLICY = AnalysisPolicy()


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The policy's fields as command-line options, their defaults taken from :data:`DEFAULT_POLICY`."""
    p = DEFAULT_POLICY
    parser.add_argument("--min-step", type=int, default=p.min_step,
                        help=f"leave out rows with step < K (default {p.min_step}: step 0, where N^-beta is infinite)")
    parser.add_argument("--loss", default=p.loss, choices=LOSSES, help=f"objective (default {p.loss})")
    parser.add_argument("--delta", type=float, default=p.delta, help=f"Huber threshold (default {p.delta:g})")
    parser.add_argument("--bootstrap", type=int, default=p.bootstrap,
                        help=f"resamples of runs per fit, used with >= {p.min_clusters} runs (default {p.bootstrap}; 0: none)")
    parser.add_argument("--level", type=float, default=p.ci_level, help=f"interval level (default {p.ci_level})")
    parser.add_argument("--seed", type=int, default=p.seed, help=f"bootstrap seed (default {p.seed})")
    parser.add_argument("--jobs", type=int, default=p.n_jobs,
                        help=f"processes for the bootstrap refits (default {p.n_jobs}; results do not depend on it)")


def policy_from_args(args: argparse.Namespace) -> AnalysisPolicy:
    """The policy of parsed :func:`add_policy_arguments` options."""
    return DEFAULT_POLICY.updated(min_step=args.min_step, loss=args.loss, delta=args.delta, bootstrap=args.bootstrap,
                                  ci_level=args.level, seed=args.seed, n_jobs=args.jobs)
