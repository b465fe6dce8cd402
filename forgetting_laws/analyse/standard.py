"""The standard analysis of a sweep: which laws to fit to which columns, and the figure set.

Used by the CLI (``fit``, ``figures``, ``report``, ``demo``), the ``analysis/`` scripts and
the notebooks, so each figure and fit is defined once.

Example
-------
>>> fits = fit_sweep(load_runs("demo-out/runs"), bootstrap=200)   # doctest: +SKIP
>>> fits["inverse_linear"].params                                  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .fit import fit, holdout_mask
from .result import FitResult

__all__ = ["StandardFit", "STANDARD_FITS", "fit_sweep", "write_figures", "verdict", "FIGURES", "Figure",
           "figure_script"]

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


def fit_sweep(df: pd.DataFrame, bootstrap: int = 200, min_step: int = 1, seed: int = 0,
              names: list[str] | None = None, n_jobs: int = 1) -> dict[str, FitResult]:
    """Fit the standard laws to a sweep's rows (steps below ``min_step`` left out).

    Step 0 is left out by default: at N = 0 the power laws in N are infinite. A law that cannot
    be fitted to these rows (too few points, say) is skipped with its reason in ``skipped``.
    """
    fits: dict[str, FitResult] = {}
    for name in list(STANDARD_FITS) if names is None else names:
        s = STANDARD_FITS[name]
        fits[name] = fit(df, s.law, x=s.x, y=s.y, bootstrap=bootstrap, holdout=s.holdout,
                         min_step=min_step, seed=seed, n_jobs=n_jobs)
    return fits


def verdict(res: FitResult) -> str:
    """A plain-language judgement of a fit's quality, for reports."""
    r2 = res.metrics.get("r2", float("nan"))
    words = ("fits well" if r2 >= 0.97 else "fits acceptably" if r2 >= 0.9 else
             "fits poorly" if r2 >= 0.5 else "does not describe these data")
    text = f"R² = {r2:.3f}: the law {words}."
    held = res.metrics.get("holdout")
    if held:
        text += f" On held-out points ({held.get('spec')}) its mean absolute relative error is {held['are']:.2%}."
    unidentified = [w for w in res.warnings if "not separately identifiable" in w or "not identified" in w]
    if unidentified:
        text += (f" {len(unidentified)} parameter warning(s): these data do not pin down the individual "
                 "parameters, so read the law's predictions, not its parameter values.")
    return text


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
    return forgetting_map(fits["kalajdzievski_forget"], df[df.step >= min_step])


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
        residuals(fits[n], ax=ax)
    return fig


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


@dataclass(frozen=True)
class Figure:
    """A figure of the standard set: its builder, caption, the fits it draws on and, when it
    needs columns only some sweeps record, ``when(df)``: whether ``df`` has them."""

    build: Any
    caption: str
    needs: tuple[str, ...]
    when: Any = None

    def available(self, df: pd.DataFrame, fits: dict) -> bool:
        return all(n in fits for n in self.needs) and (self.when is None or self.when(df))


FIGURES: dict[str, Figure] = {
    "fig2_forgetting_vs_ft": Figure(figure_fig2, "Forgetting against fine-tuning loss with the inverse-linear "
                                    "fit and its bootstrap band (the paper's Figure 2).", ("inverse_linear",)),
    "fig3_trajectories_ft": Figure(figure_traj_ft, "Fine-tuning loss over steps by rank; dashed: the fitted "
                                   "L_ft(P, N) law (the paper's Figure 3).", ("kalajdzievski_ft",)),
    "fig3_trajectories_forget": Figure(figure_traj_forget, "Forgetting loss over steps by rank; dashed: the "
                                       "fitted L_f(P, N) law.", ("kalajdzievski_forget",)),
    "forgetting_map": Figure(figure_map, "Predicted forgetting over the (P, N) plane; circles: measured runs.",
                             ("kalajdzievski_forget",)),
    "holdout_rank": Figure(figure_holdout_rank, "L_f(P, N) fitted without the largest rank, predicting it.",
                           ("kalajdzievski_forget@rank:largest",)),
    "holdout_step": Figure(figure_holdout_step, "L_f(P, N) fitted on early steps, predicting the last 30%.",
                           ("kalajdzievski_forget@step:last:0.3",)),
    "residuals": Figure(figure_residuals, "Residuals of each law against its fitted values.",
                        ("inverse_linear", "kalajdzievski_ft", "kalajdzievski_forget")),
    "bootstrap_exponents": Figure(figure_bootstrap, "Bootstrap distributions of the L_f(P, N) exponents.",
                                  ("kalajdzievski_forget",)),
    "downstream_over_steps": Figure(figure_downstream, "lm-evaluation-harness probes over steps by rank: "
                                    "accuracy against the gold answers, agreement with the base model's "
                                    "answers, refusal rate and base refusals lost.", (), _has_downstream),
    "agreement_vs_forgetting": Figure(figure_agreement, "Agreement with the base model's answers against "
                                      "the forgetting loss L_f, by rank.", (),
                                      lambda df: _has_downstream(df, ("agree",))),
}


def write_figures(df: pd.DataFrame, fits: dict[str, FitResult], out_dir: str | Path,
                  min_step: int = 1, formats: tuple[str, ...] = ("png", "pdf")) -> dict[str, list[Path]]:
    """Draw every figure whose fits exist and save it as PNG and PDF under ``out_dir``."""
    from .plots import save

    written = {}
    for name, figure in FIGURES.items():
        if figure.available(df, fits):
            written[name] = save(figure.build(df, fits, min_step), Path(out_dir) / name, formats)
    return written


def figure_script(name: str, argv: list[str] | None = None) -> list[Path]:
    """Entry point of the ``analysis/`` scripts: regenerate figure ``name`` from a runs folder."""
    import argparse

    from ..store import load_runs

    parser = argparse.ArgumentParser(description=f"Regenerate {name}: {FIGURES[name].caption}")
    parser.add_argument("runs_dir", help="RUNS_DIR of a sweep (or a .parquet file)")
    parser.add_argument("--out", "-o", default="figures", help="output folder (default: figures)")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--min-step", type=int, default=1)
    args = parser.parse_args(argv)
    df = load_runs(args.runs_dir)
    fits = fit_sweep(df, args.bootstrap, args.min_step, names=list(FIGURES[name].needs))
    if not FIGURES[name].available(df, fits):
        raise SystemExit(f"{args.runs_dir} lacks the columns of {name}; its sweep needs [probe.lm_eval] / [probe.refusal]")
    from .plots import save

    paths = save(FIGURES[name].build(df, fits, args.min_step), Path(args.out) / name)
    print("\n".join(map(str, paths)))
    return paths
