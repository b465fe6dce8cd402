"""The standard analysis of a sweep: which laws to fit to which columns, and the figure set.

Used by the CLI (``fit``, ``figures``, ``report``, ``demo``), the ``analysis/`` scripts and
the notebooks, so each figure and fit is defined once.

Every fit follows one analysis policy (:data:`~forgetting_laws.analyse.policy.DEFAULT_POLICY`
unless one is given). A law that cannot be fitted to a sweep (too few runs, say) is skipped, its
reason kept in ``fits.skipped``, and the figures that need it are left out.

Example
-------
>>> fits = fit_sweep(load_runs("demo-out/runs"))        # doctest: +SKIP
>>> fits["inverse_linear"].params, fits.skipped          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import FitDataError
from .alternatives import Alternative, LawTest, holdout_baselines, inverse_linear_alternatives
from .fit import fit, holdout_mask
from .fit_report import verdict
from .laws import LawError
from .policy import DEFAULT_POLICY, AnalysisPolicy
from .result import FitResult

__all__ = ["StandardFit", "STANDARD_FITS", "SweepFits", "fit_sweep", "fit_sweep_cached", "analysis_key",
           "write_figures", "verdict", "FIGURES",
           "Figure", "figure_script"]

PN = {"P": "trainable_params", "N": "step"}


@dataclass(frozen=True)
class StandardFit:
    """One law fitted to one set of sweep columns."""

    law: str
    y: str | tuple[str, ...]
    x: dict[str, str] = field(default_factory=dict)
    holdout: str | None = None
    description: str = ""


STANDARD_FITS: dict[str, StandardFit] = {
    "inverse_linear": StandardFit("inverse_linear", "forget_loss", {"L_ft": "ft_loss"},
                                  description="L_f against L_ft (Kalajdzievski eq. 4)"),
    "kalajdzievski_ft": StandardFit("kalajdzievski_ft", "ft_loss", PN,
                                    description="L_ft as a shifted power law in P and N (eq. 5)"),
    "kalajdzievski_forget": StandardFit("kalajdzievski_forget", "forget_loss", PN,
                                        description="L_f as a shifted power law in P and N (eq. 6)"),
    "kalajdzievski_forget@rank:largest": StandardFit(
        "kalajdzievski_forget", "forget_loss", PN, holdout="rank:largest",
        description="L_f(P, N) fitted without the largest rank, predicting it"),
    "kalajdzievski_forget@step:last:0.3": StandardFit(
        "kalajdzievski_forget", "forget_loss", PN, holdout="step:last:0.3",
        description="L_f(P, N) fitted on early steps, predicting the last 30%"),
}


class SweepFits(dict):
    """Name -> :class:`FitResult` of the standard fits of a sweep, with the ``policy`` they follow;
    in ``skipped``, name -> the reason for each law that could not be fitted; in ``law_test``, the
    inverse-linear law tested against its alternatives (None, with ``law_test_note``, when it could
    not be)."""

    def __init__(self, policy: AnalysisPolicy) -> None:
        super().__init__()
        self.policy = policy
        self.skipped: dict[str, str] = {}
        self.law_test: LawTest | None = None
        self.law_test_note = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: each fit's :meth:`FitResult.to_dict`, the policy, skips and the law test."""
        test = None if self.law_test is None else asdict(self.law_test)
        return {"policy": self.policy.to_dict(), "fits": {n: r.to_dict() for n, r in self.items()},
                "skipped": self.skipped, "law_test": test, "law_test_note": self.law_test_note}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepFits:
        """The fits saved by :meth:`to_dict`."""
        fits = cls(AnalysisPolicy.from_dict(d["policy"]))
        fits.update({n: FitResult.from_dict(r) for n, r in d["fits"].items()})
        fits.skipped, fits.law_test_note = dict(d["skipped"]), d["law_test_note"]
        if d["law_test"] is not None:
            test = dict(d["law_test"])
            alts = [Alternative(**{**a, "df": tuple(a["df"])}) for a in test.pop("alternatives")]
            fits.law_test = LawTest(**test, alternatives=alts)
        return fits


def fit_sweep(df: pd.DataFrame, policy: AnalysisPolicy | None = None, names: list[str] | None = None,
              progress: bool = False, **overrides: Any) -> SweepFits:
    """Fit the standard laws to a sweep's rows under ``policy`` (``overrides``: policy fields).

    A law that cannot be fitted to these rows (too few points, say) is skipped, with its reason
    in the result's ``skipped``; the others are fitted as usual. Held-out predictions are put
    beside simple baselines (:func:`~forgetting_laws.analyse.alternatives.holdout_baselines`), and
    the inverse-linear law is tested against its alternatives. Runs that differ in a setting
    (method, model, ...) are fitted pooled, with a warning naming it. ``progress``: bars on the
    laws and their bootstraps, to stderr.
    """
    from tqdm import tqdm

    from .tables import warn_if_pooled

    policy = (policy or DEFAULT_POLICY).updated(**overrides)
    warn_if_pooled(df)
    fits = SweepFits(policy)
    for name in tqdm(list(STANDARD_FITS) if names is None else names, desc="fitting laws", disable=not progress,
                     file=sys.stderr, leave=False):
        s = STANDARD_FITS[name]
        try:
            fits[name] = fit(df, s.law, x=s.x, y=s.y, policy=policy, holdout=s.holdout, progress=progress)
        except (FitDataError, LawError) as err:
            fits.skipped[name] = str(err)
            continue
        if s.holdout:
            holdout_baselines(df, fits[name])
    if "inverse_linear" in fits:
        try:
            fits.law_test = inverse_linear_alternatives(df, policy)
        except FitDataError as err:
            fits.law_test_note = str(err)
    return fits


#: Version of the saved-fits file of :func:`fit_sweep_cached`.
CACHE_FORMAT = 1


def analysis_key(df: pd.DataFrame, policy: AnalysisPolicy) -> str:
    """A content hash of what a sweep's fits depend on: the rows (values, columns and dtypes), the
    policy (all but ``n_jobs``, which changes no number), the standard fits and the package version."""
    from .. import __version__

    h = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    policy_fields = {k: v for k, v in policy.to_dict().items() if k != "n_jobs"}
    h.update(json.dumps([list(map(str, df.columns)), list(map(str, df.dtypes)), policy_fields,
                         {n: asdict(s) for n, s in STANDARD_FITS.items()}, __version__, CACHE_FORMAT],
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


def fit_sweep_cached(df: pd.DataFrame, policy: AnalysisPolicy, path: str | Path,
                     progress: bool = False) -> tuple[SweepFits, bool]:
    """The standard fits of ``df`` from ``path`` when it holds them for these rows and this policy
    (:func:`analysis_key`), else :func:`fit_sweep`'s, saved to ``path``; and whether they were reused.

    Example
    -------
    >>> fits, reused = fit_sweep_cached(df, DEFAULT_POLICY, "runs/demo/_fits/fits.json")  # doctest: +SKIP
    """
    from ..store import CorruptFile, read_json, write_json
    from .tables import warn_if_pooled

    path, key = Path(path), analysis_key(df, policy)
    try:
        saved = read_json(path)
    except CorruptFile:
        saved = None  # an unreadable cache is refitted and overwritten
    if saved and saved.get("key") == key:
        warn_if_pooled(df)
        return SweepFits.from_dict(saved["fits"]), True
    fits = fit_sweep(df, policy, progress=progress)
    write_json(path, {"format": CACHE_FORMAT, "key": key, "fits": fits.to_dict()})
    return fits, False


def _held_mask(df: pd.DataFrame, res: FitResult, min_step: int) -> tuple[pd.DataFrame, np.ndarray]:
    rows = df[df.step >= min_step].reset_index(drop=True)
    return rows, holdout_mask(rows, res.metrics["holdout"]["spec"])


def figure_fig2(df, fits, min_step):
    from .plots import forgetting_vs_ft
    return forgetting_vs_ft(df[df.step >= min_step], fits.get("inverse_linear"))


def figure_traj_ft(df, fits, min_step):
    from .plots import trajectories
    return trajectories(df, fits.get("kalajdzievski_ft"), "ft_loss", fit_from=min_step)


def figure_traj_forget(df, fits, min_step):
    from .plots import trajectories
    return trajectories(df, fits.get("kalajdzievski_forget"), "forget_loss", fit_from=min_step)


def figure_map(df, fits, min_step):
    from .plots import forgetting_map
    base = df.loc[df.step == 0, "forget_loss"].mean() if (df.step == 0).any() else None
    return forgetting_map(fits["kalajdzievski_forget"], df[df.step >= min_step], base=base)


def figure_holdout_rank(df, fits, min_step):
    from .plots import extrapolation
    res = fits["kalajdzievski_forget@rank:largest"]
    return extrapolation(res, *_held_mask(df, res, min_step))


def figure_holdout_step(df, fits, min_step):
    from .plots import extrapolation
    res = fits["kalajdzievski_forget@step:last:0.3"]
    return extrapolation(res, *_held_mask(df, res, min_step))


def figure_residuals(df, fits, min_step):
    import matplotlib.pyplot as plt

    from .plots import residuals
    names = [n for n in ("inverse_linear", "kalajdzievski_ft", "kalajdzievski_forget") if n in fits]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), layout="constrained", squeeze=False)
    for ax, n in zip(axes[0], names):
        residuals(fits[n], ax=ax, ranks=_fitted_ranks(df, fits[n], min_step))
    return fig


def _fitted_ranks(df: pd.DataFrame, res: FitResult, min_step: int) -> np.ndarray | None:
    """The rank of each row ``res`` was fitted to, as :func:`fit` selected and ordered them (rows from
    ``min_step``, finite, by run and step, held-out rows left out); None where they do not match."""
    cols = list(dict.fromkeys([*(res.x or {}).values(), *res.y]))
    if "rank" not in df or not set(cols) <= set(df.columns):
        return None
    rows = df[df.step >= min_step].sort_values(["run_id", "step"], kind="stable")
    rows = rows[np.isfinite(rows[cols].apply(pd.to_numeric, errors="coerce").to_numpy(float)).all(axis=1)]
    spec = (res.metrics.get("holdout") or {}).get("spec") or res.options.get("holdout")
    if spec:
        rows = rows[~holdout_mask(rows.reset_index(drop=True), spec)]
    y = rows[res.y[0]].to_numpy(float)
    obs = np.asarray(res.y_obs, float).ravel()[:len(y)]
    return rows["rank"].to_numpy(int) if len(y) == obs.size and np.allclose(y, obs) else None


def figure_bootstrap(df, fits, min_step):
    from .plots import bootstrap_params
    return bootstrap_params(fits["kalajdzievski_forget"])


def figure_downstream(df, fits, min_step):
    from .plots import downstream_over_steps
    return downstream_over_steps(df)


def figure_agreement(df, fits, min_step):
    from .plots import agreement_vs_forgetting
    return agreement_vs_forgetting(df)


def _has_downstream(df: pd.DataFrame, kinds: tuple[str, ...] = ("acc", "agree")) -> bool:
    from .plots import downstream_columns
    return bool(downstream_columns(df, kinds))


def _has_draws(name: str) -> Any:
    return lambda df, fits: fits[name].draws.size > 0


@dataclass(frozen=True)
class Figure:
    """A figure of the standard set: its builder, caption, the fits it draws on (``needs``: all of
    them; ``uses``: any of them) and, when it needs what only some sweeps have, ``when(df, fits)``."""

    build: Any
    caption: str
    needs: tuple[str, ...] = ()
    when: Any = None
    uses: tuple[str, ...] = ()

    def available(self, df: pd.DataFrame, fits: dict) -> bool:
        return (all(n in fits for n in self.needs) and (not self.uses or any(n in fits for n in self.uses))
                and (self.when is None or self.when(df, fits)))

    def missing(self, fits: dict) -> list[str]:
        """The fits this figure needs that ``fits`` lacks."""
        return [n for n in self.needs if n not in fits] or ([] if any(n in fits for n in self.uses) else
                                                             list(self.uses))


FIGURES: dict[str, Figure] = {
    "fig2_forgetting_vs_ft": Figure(figure_fig2, "Forgetting against fine-tuning loss with the inverse-linear "
                                    "fit, the 95% band of the mean line and the 95% prediction interval (the paper's Figure 2).", ("inverse_linear",)),
    "fig3_trajectories_ft": Figure(figure_traj_ft, "Fine-tuning loss over steps by rank; dashed: the fitted "
                                   "L_ft(P, N) law (the paper's Figure 3).", ("kalajdzievski_ft",)),
    "fig3_trajectories_forget": Figure(figure_traj_forget, "Forgetting loss over steps by rank; dashed: the "
                                       "fitted L_f(P, N) law.", ("kalajdzievski_forget",)),
    "forgetting_map": Figure(figure_map, "Predicted forgetting L_f over the (P, N) plane; dashed box: the "
                             "measured region (beyond it, hatched, the law is extrapolated); red: the base "
                             "model's L_f; circles: measured runs.",
                             ("kalajdzievski_forget",)),
    "holdout_rank": Figure(figure_holdout_rank, "L_f(P, N) fitted without the largest rank, predicting it.",
                           ("kalajdzievski_forget@rank:largest",)),
    "holdout_step": Figure(figure_holdout_step, "L_f(P, N) fitted on early steps, predicting the last 30%.",
                           ("kalajdzievski_forget@step:last:0.3",)),
    "residuals": Figure(figure_residuals, "Residuals of each law against its fitted values, coloured by rank r.",
                        uses=("inverse_linear", "kalajdzievski_ft", "kalajdzievski_forget")),
    "bootstrap_exponents": Figure(figure_bootstrap, "Bootstrap distributions of the L_f(P, N) exponents "
                                  "(drawn when the sweep has runs enough for a cluster bootstrap).",
                                  ("kalajdzievski_forget",), _has_draws("kalajdzievski_forget")),
    "downstream_over_steps": Figure(figure_downstream, "lm-evaluation-harness probes over steps by rank: "
                                    "accuracy against the gold answers, agreement with the base model's "
                                    "answers, refusal rate and base refusals lost.", (),
                                    lambda df, fits: _has_downstream(df)),
    "agreement_vs_forgetting": Figure(figure_agreement, "Agreement with the base model's answers against "
                                      "the forgetting loss L_f, by rank.", (),
                                      lambda df, fits: _has_downstream(df, ("agree",))),
}


def write_figures(df: pd.DataFrame, fits: dict[str, FitResult], out_dir: str | Path,
                  formats: tuple[str, ...] = ("png", "pdf")) -> dict[str, list[Path]]:
    """Draw every figure whose fits exist and save it as PNG and PDF under ``out_dir``; rows below the
    fits' ``min_step`` are drawn as not fitted."""
    from .plots import save

    min_step = getattr(fits, "policy", DEFAULT_POLICY).min_step
    written = {}
    for name, figure in FIGURES.items():
        if figure.available(df, fits):
            written[name] = save(figure.build(df, fits, min_step), Path(out_dir) / name, formats)
    return written


def figure_script(name: str, argv: list[str] | None = None) -> list[Path]:
    """Entry point of the ``analysis/`` scripts: regenerate figure ``name`` from a runs folder."""
    import argparse

    from ..store import load_runs
    from .policy import add_policy_arguments, policy_from_args

    parser = argparse.ArgumentParser(description=f"Regenerate {name}: {FIGURES[name].caption}")
    parser.add_argument("runs_dir", help="RUNS_DIR of a sweep (or a .parquet file)")
    parser.add_argument("--out", "-o", default="figures", help="output folder (default: figures)")
    add_policy_arguments(parser)
    args = parser.parse_args(argv)
    df = load_runs(args.runs_dir)
    figure = FIGURES[name]
    fits = fit_sweep(df, policy_from_args(args), names=list(figure.needs or figure.uses))
    if not figure.available(df, fits):
        why = "; ".join(f"{n}: {fits.skipped[n]}" for n in figure.missing(fits) if n in fits.skipped)
        raise SystemExit(f"{args.runs_dir} cannot give {name}: " + (why or "its sweep lacks what it draws "
                         "([probe.lm_eval] / [probe.refusal] columns, or runs enough for a bootstrap)"))
    from .plots import save

    paths = save(figure.build(df, fits, fits.policy.min_step), Path(args.out) / name)
    print("\n".join(map(str, paths)))
    return paths
