"""Paper-style figures. Each function draws one thing on an optional Axes and returns it.

Inputs are a runs DataFrame (:func:`forgetting_laws.load_runs`) and/or a
:class:`~forgetting_laws.analyse.fit.FitResult`; nothing here loads, fits or imports torch.

Example
-------
>>> ax = forgetting_vs_ft(df, fit_il)                       # doctest: +SKIP
>>> ax.figure.savefig("fig2.png")                           # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..errors import FitDataError

__all__ = ["forgetting_vs_ft", "trajectories", "forgetting_map", "extrapolation", "residuals",
           "bootstrap_params", "rank_colors", "save", "method_comparison", "cl_heatmap", "cl_metric_bars",
           "connectivity_curves", "sharpness_curves", "loss_surface", "sharpness_scatter", "plan_figure", "OKABE_ITO", "LABELS", "SYMBOLS",
           "downstream_columns", "downstream_over_steps", "agreement_vs_forgetting"]

#: Okabe & Ito's colour-blind-safe palette.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

LABELS = {"ft_loss": "fine-tuning loss $L_{ft}$", "forget_loss": "forgetting loss $L_f$",
          "step": "update steps $N$", "trainable_params": "fine-tuned parameters $P$",
          "ref_loss": "reference loss", "agreement": "agreement with base"}

#: The paper's notation, for titles and short labels.
SYMBOLS = {"ft_loss": "$L_{ft}$", "forget_loss": "$L_f$", "step": "$N$", "trainable_params": "$P$", "rank": "$r$"}

plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10,
                     "legend.fontsize": 8, "figure.dpi": 110})


def _axes(ax, size=(5.0, 4.0)):
    if ax is None:
        _, ax = plt.subplots(figsize=size, layout="constrained")
    return ax


def rank_colors(ranks: Sequence[int]) -> dict[int, str]:
    """One Okabe-Ito colour per rank, in increasing rank order."""
    return {r: OKABE_ITO[i % len(OKABE_ITO)] for i, r in enumerate(sorted(set(int(r) for r in ranks)))}


def _curve_inputs(fit, df: pd.DataFrame) -> dict[str, str]:
    """Law input name -> DataFrame column, as the fit used them."""
    return {name: (fit.x or {}).get(name, name) for name in fit.law.inputs}


def forgetting_vs_ft(df: pd.DataFrame, fit=None, ax=None, x: str = "ft_loss", y: str = "forget_loss"):
    r"""Forgetting against fine-tuning loss, coloured by rank, with the fitted line and its band.

    The paper's Figure 2: :math:`L_f = s - c\,L_{ft}` (``inverse_linear``).
    """
    ax = _axes(ax)
    colors = rank_colors(df["rank"])
    for rank, g in df.groupby("rank"):
        ax.scatter(g[x], g[y], s=14, color=colors[int(rank)], label=f"r = {rank}", alpha=0.85, zorder=3)
    if fit is not None:
        grid = np.linspace(df[x].min(), df[x].max(), 200)
        (name,) = fit.law.inputs
        ax.plot(grid, fit.predict(**{name: grid}), "k-", lw=1.5, label="fit", zorder=4)
        _bands(ax, fit, grid, {name: grid})
        p = fit.params
        eq = f"$L_f = {p['s']:.3f} - {p['c']:.3f}\\,L_{{ft}}$" if "c" in p and "s" in p else fit.law_name
        ax.text(0.03, 0.04, f"{eq}\n$R^2$ = {fit.metrics['r2']:.3f}", transform=ax.transAxes,
                fontsize=9, bbox={"fc": "white", "ec": "0.7", "alpha": 0.9})
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.legend(loc="upper right", ncols=2)
    return ax


def _bands(ax, fit, x: np.ndarray, inputs: dict) -> None:
    """The prediction interval (new measurements, light) and the confidence band (the mean line,
    dark) of ``fit`` along ``x``; nothing where the fit has no intervals."""
    for method, color, what in (("prediction_interval", "0.85", "prediction interval"),
                                ("confidence_band", "0.55", "band of the mean")):
        try:
            lo, hi = getattr(fit, method)(**inputs)
        except FitDataError:
            continue
        ax.fill_between(x, lo, hi, color=color, alpha=0.6, lw=0, label=f"{fit.ci_level:.0%} {what}")


def trajectories(df: pd.DataFrame, fit=None, metric: str = "ft_loss", ax=None, log_steps: bool = True,
                 fit_from: int = 1):
    """Loss over steps, one line per rank; dashed: the fitted P,N law (the paper's Figure 3).

    Points at steps below ``fit_from`` (left out of the fit) are drawn hollow, and the fitted
    curve starts there.
    """
    ax = _axes(ax)
    colors = rank_colors(df["rank"])
    for rank, g in df.sort_values("step").groupby("rank"):
        g = g[g.step > 0] if log_steps else g
        color = colors[int(rank)]
        early = g.step < fit_from
        ax.plot(g.step[~early], g[metric][~early], "o", ms=3.5, color=color, label=f"r = {rank}")
        if early.any():
            ax.plot(g.step[early], g[metric][early], "o", ms=3.5, mfc="none", color=color)
        if fit is not None:
            ax.plot(*_fitted_curve(fit, g, metric, max(1, fit_from)), "--", lw=1.2, color=color)
    if log_steps:
        ax.set_xscale("log")
    ax.set_xlabel(LABELS["step"])
    ax.set_ylabel(LABELS.get(metric, metric))
    law = f"{SYMBOLS.get(metric, metric)}$(P, N)$" if fit is not None and fit.law_name.startswith("kalajdzievski") \
        else getattr(fit, "law_name", "")
    title = f"{SYMBOLS.get(metric, metric)}: measured (points)" + (f", fitted {law} (dashed)" if fit is not None else "")
    if fit is not None and fit_from > 1:
        title += f"; hollow: steps < {fit_from}, not fitted"
    ax.set_title(title, fontsize=9)
    ax.legend(ncols=2)
    return ax


def _fitted_curve(fit, run: pd.DataFrame, metric: str, start: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitted law along one run's steps (its other inputs held at the run's values)."""
    steps = np.geomspace(start, run.step.max(), 100)
    inputs = {k: (steps if c == "step" else np.full_like(steps, run[c].iloc[0], dtype=float))
              for k, c in _curve_inputs(fit, run).items()}
    pred = np.asarray(fit.predict(**inputs))
    return steps, (pred[_output_index(fit, metric)] if pred.ndim == 2 else pred)


def _output_index(fit, metric: str) -> int:
    """Which output of a joint law predicts ``metric``."""
    outputs = list(fit.y) if fit.y else list(fit.law.outputs)
    return outputs.index(metric) if metric in outputs else 0


def forgetting_map(fit, df: pd.DataFrame | None = None, ax=None, levels: int = 12,
                   metric: str = "forget_loss", base: float | None = None):
    """Predicted forgetting over the (P, N) plane as a contour map, measured runs on top.

    The region the runs measured (their P and N range, dashed box) is drawn at full colour; beyond
    it the law is extrapolated, drawn faded and hatched. ``base`` (default: the mean step-0
    ``metric`` of ``df``), the base model's value, is drawn as a contour and on the colour bar.
    """
    ax = _axes(ax, (5.5, 4.0))
    cols = _curve_inputs(fit, df if df is not None else pd.DataFrame())
    p_in, n_in = fit.law.inputs
    P = np.asarray(fit.inputs[p_in], float)
    N = np.asarray(fit.inputs[n_in], float)
    pg = np.geomspace(P.min() / 2, P.max() * 2, 80)
    ng = np.linspace(max(N.min(), 1), N.max() * 1.5, 80)
    PP, NN = np.meshgrid(pg, ng)
    Z = np.asarray(fit.predict(**{p_in: PP.ravel(), n_in: NN.ravel()}))
    Z = (Z[_output_index(fit, metric)] if Z.ndim == 2 else Z).reshape(PP.shape)
    lv = np.linspace(np.nanmin(Z), np.nanmax(Z), levels + 1)
    ax.contourf(PP, NN, Z, levels=lv, cmap="cividis", alpha=0.35)
    ax.contourf(PP, NN, Z, levels=lv, colors="none", hatches=["////"])
    inside = (PP >= P.min()) & (PP <= P.max()) & (NN >= N.min()) & (NN <= N.max())
    cs = ax.contourf(PP, NN, np.ma.masked_where(~inside, Z), levels=lv, cmap="cividis")
    ax.contour(PP, NN, Z, levels=lv, colors="white", linewidths=0.4, alpha=0.6)
    ax.add_patch(plt.Rectangle((P.min(), N.min()), P.max() - P.min(), N.max() - N.min(), fill=False, ls="--",
                               color="k", lw=1.2, label="measured region; hatched: extrapolated"))
    bar = ax.figure.colorbar(cs, ax=ax, label=f"predicted {LABELS.get(metric, metric)}")
    if base is None and df is not None and "step" in df and (df["step"] == 0).any():
        base = float(df.loc[df["step"] == 0, metric].mean())
    if base is not None:
        where = "below the map's range" if base <= lv[0] else "above the map's range" if base >= lv[-1] else "red"
        if where == "red":
            ax.contour(PP, NN, Z, levels=[base], colors=OKABE_ITO[3], linewidths=1.5, linestyles="-")
            bar.ax.axhline(base, color=OKABE_ITO[3], lw=2)
        ax.set_title(f"base model {SYMBOLS.get(metric, metric)} = {base:.4g} ({where})", fontsize=9)
    if df is not None:
        runs = df.groupby("run_id").agg(P=(cols[p_in], "first"), N=(cols[n_in], "max"))
        ax.scatter(runs.P, runs.N, marker="o", s=40, facecolor="white", edgecolor="k", zorder=3,
                   label="measured runs (final step)")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(LABELS["trainable_params"])
    ax.set_ylabel(LABELS["step"])
    return ax


def extrapolation(fit, df: pd.DataFrame, held_out: np.ndarray, metric: str | None = None, ax=None):
    """Measured against predicted, for points fitted on (grey) and held out (coloured by rank).

    ``held_out`` is a boolean mask over ``df`` rows, as :func:`forgetting_laws.analyse.fit.holdout_mask`
    returns for the spec the fit was made with.
    """
    ax = _axes(ax, (4.5, 4.5))
    metric = metric or (fit.y[0] if fit.y else fit.law.outputs[0])
    cols = _curve_inputs(fit, df)
    pred = np.asarray(fit.predict(**{k: df[c].to_numpy(float) for k, c in cols.items()}))
    pred = pred[_output_index(fit, metric)] if pred.ndim == 2 else pred
    obs = df[metric].to_numpy(float)
    ax.scatter(pred[~held_out], obs[~held_out], s=10, color="0.65", label="fitted on")
    colors = rank_colors(df["rank"])
    interval = _held_interval(fit, df[held_out], cols, metric)
    for rank in sorted(df.loc[held_out, "rank"].unique()):
        m = held_out & (df["rank"] == rank).to_numpy()
        ax.scatter(pred[m], obs[m], s=18, color=colors[int(rank)], label=f"held out, r = {rank}", zorder=3)
        if interval is not None:
            k = m[held_out]
            ax.vlines(pred[m], interval[0][k], interval[1][k], color=colors[int(rank)], lw=0.8, alpha=0.6)
    lo, hi = np.nanmin([pred.min(), obs.min()]), np.nanmax([pred.max(), obs.max()])
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    are = np.mean(np.abs(pred[held_out] - obs[held_out]) / np.abs(obs[held_out])) if held_out.any() else np.nan
    title = f"{fit.law_name}: held-out ARE = {are:.2%}"
    if interval is not None:
        inside = (interval[0] <= obs[held_out]) & (obs[held_out] <= interval[1])
        title += f"\nbars: {fit.ci_level:.0%} prediction interval, covers {inside.sum()} of {inside.size}"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"predicted {SYMBOLS.get(metric, metric)}")
    ax.set_ylabel(f"measured {SYMBOLS.get(metric, metric)}")
    ax.legend()
    return ax


def _held_interval(fit, held: pd.DataFrame, cols: dict, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The prediction interval at the held-out rows (for ``metric``), or None without one."""
    try:
        lo, hi = fit.prediction_interval(**{k: held[c].to_numpy(float) for k, c in cols.items()})
    except FitDataError:
        return None
    lo, hi = np.asarray(lo), np.asarray(hi)
    return (lo[_output_index(fit, metric)], hi[_output_index(fit, metric)]) if lo.ndim == 2 else (lo, hi)


def residuals(fit, ax=None, against: str | None = None, ranks: Sequence[int] | None = None):
    """Residuals (observed - fitted) against the fitted values or against one input; coloured by
    rank when ``ranks`` gives each fitted row's rank (in the fit's row order)."""
    ax = _axes(ax, (5.0, 3.2))
    r = np.asarray(fit.residuals)
    xs = np.asarray(fit.fitted) if against is None else np.tile(np.asarray(fit.inputs[against]), r.size // len(fit.inputs[against]))
    if ranks is not None and np.size(ranks) * max(1, r.size // max(1, np.size(ranks))) == r.size:
        by = np.tile(np.asarray(ranks, int), r.size // np.size(ranks))
        colors = rank_colors(by)
        for rank in sorted(colors):
            m = by == rank
            ax.scatter(xs[m], r[m], s=10, color=colors[rank], alpha=0.85, label=f"r = {rank}")
        ax.legend(fontsize=7, ncols=2)
    else:
        ax.scatter(xs, r, s=10, color=OKABE_ITO[0], alpha=0.8)
    ax.axhline(0, color="k", lw=1)
    if against is not None and against in getattr(fit.law, "positive_inputs", ()):
        ax.set_xscale("log")
    y = fit.y[0] if fit.y else None
    ax.set_xlabel(f"fitted {SYMBOLS.get(y, y or '')}".strip() if against is None else against)
    ax.set_ylabel("residual" + (f" of {SYMBOLS[y]}" if y in SYMBOLS else ""))
    ax.set_title(f"{fit.law_name} residuals (RMSE {fit.metrics.get('rmse', float('nan')):.3g})", fontsize=10)
    return ax


def bootstrap_params(fit, params: Sequence[str] | None = None, axes=None):
    """Histograms of the bootstrap draws of ``params`` (default: the exponents), best fit marked."""
    names = list(fit.params)
    params = list(params or [p for p in names if p.startswith(("alpha", "beta", "rho"))] or names[:2])
    if axes is None:
        _, axes = plt.subplots(1, len(params), figsize=(2.6 * len(params), 2.6), layout="constrained", squeeze=False)
        axes = axes[0]
    if fit.draws.size == 0:
        raise ValueError("this fit has no bootstrap draws; refit with bootstrap > 0")
    for ax, p in zip(axes, params):
        draws = fit.draws[:, names.index(p)]
        ax.hist(draws[np.isfinite(draws)], bins=30, color=OKABE_ITO[5], edgecolor="white")
        ax.axvline(fit.params[p], color="k", lw=1.5, label="best fit")
        lo, hi = fit.ci[p]
        ax.axvspan(lo, hi, color="0.5", alpha=0.2, label=f"{fit.ci_level:.0%} CI")
        ax.set_xlabel(p)
    axes[0].set_ylabel("bootstrap draws")
    axes[0].legend(fontsize=7)
    return axes


def save(fig_or_ax: Any, path: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Save a figure as PNG and PDF (``path`` without suffix); returns the written paths."""
    fig = fig_or_ax.figure if hasattr(fig_or_ax, "figure") and not isinstance(fig_or_ax, plt.Figure) else fig_or_ax
    if isinstance(fig_or_ax, np.ndarray):
        fig = fig_or_ax.flat[0].figure
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [path.with_suffix(f".{f}") for f in formats]
    for p in out:
        fig.savefig(p, bbox_inches="tight", dpi=150)
    plt.close(fig)
    return out


def method_comparison(cmp, ax=None, x: str = "ft_loss", y: str = "forget_loss"):
    r"""Forgetting against fine-tuning loss, one colour per method.

    Dots: every probe of every run; line and band: forgetting at matched fine-tuning loss
    (mean over runs and its bootstrap CI); dashed: the method's inverse-linear fit
    :math:`L_f = s - c\,L_{ft}`. ``cmp`` is a :class:`forgetting_laws.analyse.compare.Comparison`.
    """
    ax = _axes(ax)
    for i, (method, m) in enumerate(cmp.matched.groupby("method", sort=True)):
        color = OKABE_ITO[i % len(OKABE_ITO)]
        if cmp.runs is not None:
            pts = cmp.runs[cmp.runs["method"] == method]
            ax.scatter(pts[x], pts[y], s=10, color=color, alpha=0.35, lw=0)
        ax.plot(m[x], m[y], "-o", ms=3, color=color, label=method, zorder=4)
        ax.fill_between(m[x], m["lo"], m["hi"], color=color, alpha=0.2, lw=0)
        res = cmp.fits.get(method)
        if res is not None:
            ax.plot(m[x], res.predict(L_ft=m[x].to_numpy(float)), "--", color=color, lw=1)
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.set_title("methods at matched fine-tuning loss")
    ax.legend(loc="upper right")
    return ax


# --------------------------------------------------------------------------- downstream (lm_eval) probes


def downstream_columns(df: pd.DataFrame, kinds: Sequence[str] = ("acc", "agree")) -> list[str]:
    """The lm_eval probe columns of ``df`` that hold a value somewhere: ``lmeval_<task>_<kind>``
    for each of ``kinds``, then ``refusal_rate`` and ``refusal_lost``."""
    cols = [c for c in df.columns if c.startswith("lmeval_") and c.rsplit("_", 1)[-1] in kinds]
    cols += [c for c in ("refusal_rate", "refusal_lost") if c in df.columns]
    return [c for c in cols if df[c].notna().any()]


def _downstream_label(column: str) -> str:
    if column.startswith("lmeval_"):
        task, kind = column[len("lmeval_"):].rsplit("_", 1)
        return f"{task}: " + {"acc": "accuracy (gold)", "agree": "agreement with base answers"}.get(kind, kind)
    return {"refusal_rate": "refusal rate", "refusal_lost": "base refusals lost"}.get(column, column)


def downstream_over_steps(df: pd.DataFrame, columns: Sequence[str] | None = None, axes=None):
    """Downstream metrics over steps, one panel per column, one line per run coloured by rank.

    Default columns: every task's accuracy and agreement with the base model's answers, and the
    refusal columns (:func:`downstream_columns`). Steps where a probe did not run are skipped.
    """
    columns = list(columns or downstream_columns(df))
    if not columns:
        raise ValueError("no lm_eval probe columns (lmeval_*_acc, lmeval_*_agree, refusal_*) hold values; "
                         "add [probe.lm_eval] or [probe.refusal] to the sweep spec")
    if axes is None:
        _, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.2), layout="constrained",
                               squeeze=False)
        axes = axes[0]
    colors = rank_colors(df["rank"])
    for ax, col in zip(axes, columns):
        for run_id, g in df[df[col].notna()].sort_values("step").groupby("run_id"):
            rank = int(g["rank"].iloc[0])
            ax.plot(g.step, g[col], "-o", ms=3, color=colors[rank], label=f"r = {rank}")
        ax.set_xlabel(LABELS["step"])
        ax.set_title(_downstream_label(col), fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))  # one legend entry per rank, not per run
        ax.legend(unique.values(), unique.keys(), fontsize=7)
    return axes


def agreement_vs_forgetting(df: pd.DataFrame, x: str = "forget_loss", axes=None):
    """Each task's agreement with the base model's answers against ``x`` (forget_loss), by rank."""
    columns = downstream_columns(df, kinds=("agree",))
    columns = [c for c in columns if c.startswith("lmeval_")]
    if not columns:
        raise ValueError("no lmeval_<task>_agree column holds values; add [probe.lm_eval] with a "
                         "multiple-choice task (e.g. tasks = ['fl_arc_mini']) to the sweep spec")
    if axes is None:
        _, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.4), layout="constrained",
                               squeeze=False)
        axes = axes[0]
    colors = rank_colors(df["rank"])
    for ax, col in zip(axes, columns):
        for rank, g in df[df[col].notna()].groupby("rank"):
            ax.scatter(g[x], g[col], s=16, color=colors[int(rank)], label=f"r = {rank}", zorder=3)
        ax.set_xlabel(LABELS.get(x, x))
        ax.set_ylabel("agreement with base answers")
        ax.set_title(_downstream_label(col).split(":")[0], fontsize=9)
        ax.legend(fontsize=7)
    return axes


# --------------------------------------------------------------------------- continual learning and landscape


def cl_heatmap(matrix: np.ndarray, tasks: Sequence[str], base: np.ndarray | None = None, ax=None,
               metric: str = "held-out loss", title: str | None = None):
    """The task x task matrix: row j = after training task j (first row: the base model, if given),
    column i = evaluated on task i; each cell annotated with its value."""
    rows = ([np.asarray(base, float)] if base is not None else []) + [np.asarray(r, float) for r in matrix]
    M = np.vstack(rows)
    labels = (["base"] if base is not None else []) + [f"after {t}" for t in tasks]
    ax = _axes(ax, (1.6 + 1.3 * len(tasks), 1.2 + 0.6 * len(labels)))
    im = ax.imshow(M, cmap="viridis_r", aspect="auto")
    ax.figure.colorbar(im, ax=ax, label=metric)
    mid = np.nanmean(M)
    for (j, i), v in np.ndenumerate(M):
        ax.text(i, j, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white" if v > mid else "black")
    ax.set_xticks(range(len(tasks)), [f"on {t}" for t in tasks], rotation=20, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    if base is not None:
        ax.axhline(0.5, color="white", lw=2)
    ax.set_title(title or f"{metric}: row = after training, column = evaluated task", fontsize=9)
    return ax


def cl_metric_bars(summary: pd.DataFrame, metrics: Sequence[str] = ("AP", "BWT", "FWT", "Forgetting"),
                   by: str = "method", axes=None):
    """One panel per continual-learning metric, one bar per ``by`` value (mean over the sequences
    that share it; whiskers: min and max when there are several). Returns the axes.

    ``summary`` is :func:`forgetting_laws.measure.continual.cl_summary`'s table (metrics of negated losses:
    BWT < 0 and Forgetting > 0 mean forgetting).
    """
    if axes is None:
        _, axes = plt.subplots(1, len(metrics), figsize=(2.3 * len(metrics), 3.0), layout="constrained",
                               squeeze=False)
        axes = axes[0]
    groups = list(summary.groupby(by, sort=True))
    for ax, metric in zip(axes, metrics):
        for k, (name, g) in enumerate(groups):
            vals = g[metric].astype(float)
            mean = vals.mean()
            ax.bar(k, mean, 0.7, color=OKABE_ITO[k % len(OKABE_ITO)], label=f"{name} (n={len(g)})")
            if len(g) > 1:
                ax.errorbar(k, mean, yerr=[[mean - vals.min()], [vals.max() - mean]], fmt="none", ecolor="k",
                            lw=1, capsize=2)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(groups)), [str(n) for n, _ in groups], rotation=30, ha="right", fontsize=8)
        ax.set_title(metric)
    axes[0].set_ylabel("metric of negated loss\n(higher = better)")
    axes[0].figure.suptitle("continual-learning metrics (BWT < 0, Forgetting > 0: forgetting)", fontsize=9)
    return axes


_SPACE_LABELS = {"lora": "LoRA space (A, B)", "delta_w": r"$\Delta W$ space ($sBA$)"}


def connectivity_curves(curves: pd.DataFrame, axes=None):
    """Loss along the linear path between two adapters: one panel per evaluated set, one line per
    space (LoRA A, B interpolated; merged Delta W interpolated). ``curves`` has columns space,
    alpha, eval, loss (:func:`forgetting_laws.measure.landscape.linear_path`). Returns the axes."""
    evals = list(dict.fromkeys(curves["eval"]))
    if axes is None:
        _, axes = plt.subplots(1, len(evals), figsize=(3.2 * len(evals), 3.0), layout="constrained", squeeze=False)
        axes = axes[0]
    for ax, name in zip(axes, evals):
        for k, (space, g) in enumerate(curves[curves["eval"] == name].groupby("space", sort=True)):
            g = g.sort_values("alpha")
            ax.plot(g.alpha, g.loss, "-o", ms=3, color=OKABE_ITO[k], label=_SPACE_LABELS.get(space, space))
            ax.plot([0, 1], g.loss.iloc[[0, -1]], ":", color=OKABE_ITO[k], lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(r"$a$ in $(1-a)\,\theta_1 + a\,\theta_2$")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=7)
    return axes


def sharpness_curves(curve: pd.DataFrame, ax=None, title: str | None = None):
    """Loss along filter-normalised random directions (one line each) against the radius;
    ``curve`` has columns direction, radius, loss (:func:`forgetting_laws.measure.landscape.curve_1d`)."""
    ax = _axes(ax, (4.2, 3.2))
    for k, g in curve.groupby("direction"):
        g = g.sort_values("radius")
        ax.plot(g.radius, g.loss, "-", lw=1.2, color=OKABE_ITO[int(k) % len(OKABE_ITO)], alpha=0.85)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel("radius along a filter-normalised direction")
    ax.set_ylabel("loss")
    ax.set_title(title or "1-D loss curves", fontsize=9)
    return ax


def loss_surface(surface: pd.DataFrame, ax=None, levels: int = 14, title: str | None = None):
    """Contours of the loss on the plane of two filter-normalised directions; ``surface`` has
    columns x, y, loss (:func:`forgetting_laws.measure.landscape.surface_2d`)."""
    ax = _axes(ax, (4.4, 3.6))
    Z = surface.pivot_table(index="y", columns="x", values="loss")
    cs = ax.contourf(Z.columns, Z.index, Z.to_numpy(), levels=levels, cmap="viridis")
    ax.contour(Z.columns, Z.index, Z.to_numpy(), levels=levels, colors="white", linewidths=0.4, alpha=0.6)
    ax.figure.colorbar(cs, ax=ax, label="loss")
    ax.plot(0, 0, "k*", ms=8)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_title(title or "2-D loss surface", fontsize=9)
    return ax


def sharpness_scatter(table: pd.DataFrame, corr: dict | None = None, x: str = "eps_sharpness",
                      y: str = "forgetting", ax=None):
    """Forgetting against sharpness, one point per run (colour: method, label: rank), with the
    Spearman correlation and its bootstrap CI (:func:`forgetting_laws.measure.landscape.rank_correlation`)."""
    ax = _axes(ax, (4.6, 3.6))
    for k, (method, g) in enumerate(table.groupby("method", sort=True)):
        ax.scatter(g[x], g[y], s=30, color=OKABE_ITO[k % len(OKABE_ITO)], label=method, zorder=3)
        for _, r in g.iterrows():
            ax.annotate(f"r{int(r['rank'])}", (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if corr:
        ax.set_title(f"Spearman rho = {corr['spearman_rho']:.2f} ({corr['level']:.0%} CI "
                     f"{corr['ci_lo']:.2f} to {corr['ci_hi']:.2f}), n = {corr['n_runs']}", fontsize=9)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(LABELS.get(y, "forgetting: rise of $L_f$" if y == "forgetting" else y))
    ax.legend(fontsize=7)
    return ax


# --------------------------------------------------------------------------- planning


def plan_figure(plan, axes=None):
    """Two panels of a :class:`~forgetting_laws.analyse.plan.Plan`: the candidates' gain against
    forgetting (prediction intervals as whiskers, the Pareto front joined, the recommendation
    starred), and the candidates on the (P, N) plane coloured by predicted forgetting, with the
    pilot's measured region drawn as a box."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10.5, 4.0), layout="constrained")
    ax, bx = axes
    c = plan.candidates
    ok = c[c.supported]
    base = plan.base["forget_loss"]
    ax.errorbar(ok.gain, ok.forgetting, yerr=[ok.forget_loss - ok.forget_lo, ok.forget_hi - ok.forget_loss],
                fmt="o", ms=4, color="0.55", elinewidth=0.8, label="candidates (prediction intervals)")
    ax.plot(plan.front.gain, plan.front.forgetting, "-", color=OKABE_ITO[0], lw=1.5, label="Pareto front")
    rec = plan.recommended
    if rec is not None:
        ax.plot(rec["gain"], rec["forgetting"], "*", ms=16, color=OKABE_ITO[3],
                label=f"recommended: rank {int(rec['rank'])}, {int(rec['steps'])} steps")
    ax.set_xlabel(r"fine-tuning gain $L_{ft}(0) - L_{ft}$")
    ax.set_ylabel(r"forgetting $L_f - L_f(0)$")
    ax.legend(fontsize=8)
    sc = bx.scatter(c.P, c.steps, c=c.forget_loss, cmap="cividis", s=60, edgecolor="k",
                    marker="o", label="supported candidates")
    if (~c.supported).any():
        bx.scatter(c.P[~c.supported], c.steps[~c.supported], s=80, marker="x", color=OKABE_ITO[3],
                   label="beyond the pilot's support")
    (p0, p1), (n0, n1) = plan.measured["P"], plan.measured["N"]
    bx.add_patch(plt.Rectangle((p0, n0), p1 - p0, n1 - n0, fill=False, ls="--", color="k", label="measured region"))
    if rec is not None:
        bx.plot(rec["P"], rec["steps"], "*", ms=18, color=OKABE_ITO[3])
    bx.figure.colorbar(sc, ax=bx, label=f"predicted $L_f$ (base {base:.3f})")
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel(LABELS["trainable_params"])
    bx.set_ylabel(LABELS["step"])
    bx.legend(fontsize=7, loc="lower right")
    return axes
