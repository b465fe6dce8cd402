r"""Paired comparison of methods against plain LoRA: same rank, same seed, same fine-tuning loss.

A method that forgets less *because it learns less* is no mitigation, so forgetting is compared at
matched fine-tuning loss :math:`L_{ft}`; and runs differ from seed to seed, so each run of a method
is compared with the plain-LoRA run of the same rank and seed (same data order, same adapter
initialisation). For an arm :math:`a` (a method with its settings), a rank :math:`r`, a seed
:math:`s` and a level :math:`\ell` of :math:`L_{ft}` that all the arm's runs and their partners
reach,

.. math::

    d_{r,s}(\ell) = L_f^{a}(\ell; r, s) - L_f^{lora}(\ell; r, s), \qquad
    d_s(\ell) = \frac{1}{|R_s|} \sum_{r \in R_s} d_{r,s}(\ell),

with :math:`L_f(\ell)` read where the run first reaches :math:`\ell` (linear interpolation between
probes, :func:`forgetting_laws.analyse.compare.forget_at`). The seed is the unit of replication:
ranks share a seed's data order, so they are averaged within the seed, and the interval is a
Student t interval over the :math:`n` seed-level differences,

.. math:: \bar d \pm t_{n-1,\,1-\alpha/2}\; \mathrm{sd}(d_s) / \sqrt{n}.

With fewer than ``min_seeds`` (default 3) seeds the interval would rest on one or two values, so
the range of the seed-level differences is shown instead and the arm is called underpowered.
The same is done for ``ref_loss`` (cross-entropy on the reference data) and ``agreement`` (share
of positions where the argmax equals the base model's), read at the same levels. Nothing here
imports torch.

Example
-------
>>> res = paired(load_runs("runs/mitigation"))              # doctest: +SKIP
>>> print(res.report())                                     # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .arms import arm_labels
from .compare import forget_at
from .fit import FitDataError

__all__ = ["paired", "PairedComparison", "t_interval", "METRICS", "PAIR_KEYS"]

#: Metrics compared, with their labels in tables and figures.
METRICS = {"forget_loss": "L_f", "ref_loss": "ref_loss", "agreement": "agreement"}
#: What a run must share with its plain-LoRA partner (the grid's axes other than the method).
PAIR_KEYS = ["model", "dataset", "reference", "lr", "lora_alpha", "rank", "seed"]


# --------------------------------------------------------------------------- intervals (pure numpy)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    r"""(mean, low, high): the Student t interval :math:`\bar x \pm t_{n-1} s / \sqrt n` of ``values``.

    Exact coverage for independent normal values; NaN bounds for fewer than two values.

    Example
    -------
    >>> [round(v, 3) for v in t_interval([1.0, 2.0, 3.0])]
    [2.0, -0.484, 4.484]
    """
    x = np.asarray(values, float)
    mean = float(x.mean()) if x.size else np.nan
    if x.size < 2:
        return mean, np.nan, np.nan
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return mean, float(mean - half), float(mean + half)


# --------------------------------------------------------------------------- arms and pairs


def _common_levels(runs: pd.DataFrame, n: int) -> np.ndarray:
    """``n`` ft_loss levels every run in ``runs`` crosses, the deepest (most fine-tuned) first."""
    lo = runs.groupby("run_id")["ft_loss"].min().max()
    hi = runs.sort_values("step").groupby("run_id")["ft_loss"].first().min()
    if not lo < hi:
        raise FitDataError(f"no ft_loss level is reached by every run of {sorted(runs.arm.unique())} "
                           f"(best losses up to {lo:.4g}, starting losses down to {hi:.4g})")
    return np.linspace(lo, hi, n + 1)[:-1]


def _partners(df: pd.DataFrame, baseline: str) -> dict[tuple, str]:
    """The baseline's run ids by their :data:`PAIR_KEYS` values (one run each)."""
    runs = df[df.arm == baseline].drop_duplicates("run_id").set_index(PAIR_KEYS)["run_id"]
    if runs.index.duplicated().any():
        raise FitDataError(f"two {baseline} runs share {', '.join(PAIR_KEYS)}: compare them in separate folders")
    return runs.to_dict()


def _pairs(df: pd.DataFrame, arm: str, partners: dict[tuple, str], n_levels: int) -> pd.DataFrame:
    """One row per (rank, seed, level) of ``arm``: its metrics, its partner's, and the differences."""
    keys = df[df.arm == arm].drop_duplicates("run_id").set_index("run_id")[PAIR_KEYS]
    partner = {rid: partners[tuple(row)] for rid, row in keys.iterrows() if tuple(row) in partners}
    if not partner:
        return pd.DataFrame()
    involved = df[df.run_id.isin([*partner, *partner.values()])]
    levels = _common_levels(involved, n_levels)
    runs = {rid: g for rid, g in involved[["run_id", "step", "ft_loss", *METRICS]].groupby("run_id")}
    rows = []
    for rid, pid in partner.items():
        got = {m: (forget_at(runs[rid], levels, y=m), forget_at(runs[pid], levels, y=m)) for m in METRICS}
        for k, level in enumerate(levels):
            row = {"arm": arm, "rank": int(keys.loc[rid, "rank"]), "seed": int(keys.loc[rid, "seed"]),
                   "ft_loss": level, "depth": k, "run_id": rid, "baseline_run_id": pid}
            for m, (va, vb) in got.items():
                row.update({m: va[k], f"{m}_baseline": vb[k], f"d_{m}": va[k] - vb[k]})
            rows.append(row)
    return pd.DataFrame(rows)


def _summarise(pairs: pd.DataFrame, level: float, min_seeds: int) -> pd.DataFrame:
    """One row per (arm, level): per metric the mean seed-level difference and its interval."""
    rows = []
    for (arm, depth), g in pairs.groupby(["arm", "depth"], sort=False):
        per_seed = g.groupby("seed")[[f"d_{m}" for m in METRICS]].mean()  # (seeds, metrics)
        n = len(per_seed)
        row = {"arm": arm, "ft_loss": g.ft_loss.iloc[0], "depth": int(depth), "n_seeds": n,
               "n_pairs": len(g), "interval": "t" if n >= min_seeds else "range"}
        for m in METRICS:
            d = per_seed[f"d_{m}"].to_numpy()
            mean, lo, hi = t_interval(d, level) if n >= min_seeds else (d.mean(), d.min(), d.max())
            row.update({f"d_{m}": mean, f"d_{m}_lo": lo, f"d_{m}_hi": hi})
        row["verdict"] = _verdict(row, n, min_seeds, level)
        rows.append(row)
    return pd.DataFrame(rows)


def _verdict(row: dict, n: int, min_seeds: int, level: float) -> str:
    """Words for L_f no stronger than the interval allows."""
    if n < min_seeds:
        return f"underpowered ({n} seed{'s' * (n != 1)} < {min_seeds}): range only, no interval"
    lo, hi = row["d_forget_loss_lo"], row["d_forget_loss_hi"]
    if hi < 0:
        return f"forgets less ({level:.0%} interval below 0)"
    if lo > 0:
        return f"forgets more ({level:.0%} interval above 0)"
    return f"no difference resolved ({level:.0%} interval includes 0)"


# --------------------------------------------------------------------------- the result


@dataclass
class PairedComparison:
    """What :func:`paired` returns.

    Attributes
    ----------
    table : DataFrame
        One row per (arm, matched level), the deepest level (``depth`` 0) first: ``ft_loss``,
        ``n_seeds``, ``n_pairs``, ``interval`` ("t" or "range") and, for each metric,
        ``d_<metric>`` (mean seed-level difference, arm minus baseline) with ``_lo`` / ``_hi``,
        and the ``verdict`` on L_f.
    pairs : DataFrame
        One row per (arm, rank, seed, level): both runs' metrics and their difference.
    """

    table: pd.DataFrame
    pairs: pd.DataFrame
    baseline: str = "lora"
    level: float = 0.95
    min_seeds: int = 3
    notes: list[str] = field(default_factory=list)

    @property
    def interval_text(self) -> str:
        return (f"{self.level:.0%} Student t interval over seeds of the seed-level paired differences (arm minus "
                f"{self.baseline}, same rank and seed, averaged over the seed's ranks; n - 1 degrees of freedom); "
                f"with fewer than {self.min_seeds} seeds, the range of the seed-level differences")

    def headline(self) -> pd.DataFrame:
        """Each arm at its deepest matched level (the most fine-tuned loss all its pairs reach)."""
        return self.table[self.table.depth == 0].reset_index(drop=True)

    def report(self) -> str:
        """The headline table as text, with what the intervals are and the notes."""
        lines = [f"paired differences against {self.baseline} at matched fine-tuning loss (the deepest level each "
                 f"arm's pairs reach; every level in compare_paired.csv):", f"  interval: {self.interval_text}"]
        for _, r in self.headline().iterrows():
            cells = [f"{lab} {_cell(r, m)}" for m, lab in (("forget_loss", "dL_f"), ("ref_loss", "dref_loss"),
                                                           ("agreement", "dagreement"))]
            lines.append(f"  {r.arm:<28} L_ft {r.ft_loss:.4f}  n_seeds {r.n_seeds}  {'  '.join(cells)}  -> {r.verdict}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def __str__(self) -> str:
        return self.report()

    def plot(self, axes: Any = None) -> Any:
        """Paired differences against L_ft, one panel per metric, one colour per arm: a line with its
        interval band (dashed with a range band when underpowered), zero dotted."""
        import matplotlib.pyplot as plt

        from .plots import LABELS, OKABE_ITO

        if axes is None:
            _, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4), layout="constrained")
        for i, (arm, g) in enumerate(self.table.groupby("arm", sort=True)):
            g, color = g.sort_values("ft_loss"), OKABE_ITO[i % len(OKABE_ITO)]
            style = "-o" if (g.interval == "t").all() else "--o"
            for ax, m in zip(axes, METRICS):
                ax.plot(g.ft_loss, g[f"d_{m}"], style, ms=3, color=color, label=f"{arm} (n={g.n_seeds.min()})")
                ax.fill_between(g.ft_loss, g[f"d_{m}_lo"], g[f"d_{m}_hi"], color=color, alpha=0.18, lw=0)
        for ax, (m, lab) in zip(axes, METRICS.items()):
            ax.axhline(0, color="0.4", lw=0.8, ls=":")
            ax.set_xlabel(LABELS.get("ft_loss", "ft_loss"))
            ax.set_title(f"{lab}: arm - {self.baseline}", fontsize=9)
        axes[0].legend(fontsize=7)
        axes[0].figure.suptitle(f"paired differences at matched fine-tuning loss ({self.level:.0%} t interval "
                                f"over seeds; dashed: < {self.min_seeds} seeds, range)", fontsize=9)
        return axes


def _cell(r: pd.Series, m: str) -> str:
    bounds = "range" if r.interval == "range" else "CI"
    return f"{r[f'd_{m}']:+.4f} ({bounds} {r[f'd_{m}_lo']:+.4f}..{r[f'd_{m}_hi']:+.4f})"


# --------------------------------------------------------------------------- the comparison


def paired(df: pd.DataFrame, baseline: str = "lora", n_levels: int = 4, level: float = 0.95,
           min_seeds: int = 3) -> PairedComparison:
    """Compare every arm of a runs table with ``baseline`` run for run (see the module docstring).

    Parameters
    ----------
    df : DataFrame
        Runs as :func:`forgetting_laws.load_runs` returns them, with ``baseline`` runs.
    baseline : str
        The method every arm is compared with (plain LoRA).
    n_levels : int
        Matched ft_loss levels per arm, from the deepest its pairs all reach up to the start.
    level : float
        Confidence level of the t intervals.
    min_seeds : int
        Fewer seeds than this: ranges instead of intervals, and the arm is called underpowered.

    Returns
    -------
    PairedComparison
    """
    df = df.assign(arm=arm_labels(df))
    if baseline not in set(df.arm):
        raise FitDataError(f"no {baseline!r} runs to pair with: add {baseline!r} to the sweep's method.name axis "
                           f"(methods here: {sorted(df.method.unique())})")
    notes, frames, partners = [], [], _partners(df, baseline)
    for arm in sorted(set(df.arm) - {baseline}):
        try:
            pairs = _pairs(df, arm, partners, n_levels)
        except FitDataError as exc:
            notes.append(f"{arm}: left out, {exc}")
            continue
        if pairs.empty:
            notes.append(f"{arm}: no run has a {baseline} partner of the same {', '.join(PAIR_KEYS)}")
            continue
        frames.append(pairs)
        unpaired = df[df.arm == arm].run_id.nunique() - pairs.run_id.nunique()
        if unpaired:
            notes.append(f"{arm}: {unpaired} run(s) without a {baseline} partner left out")
    if not frames:
        raise FitDataError(f"no arm has runs paired with {baseline!r} runs")
    pairs = pd.concat(frames, ignore_index=True)
    table = _summarise(pairs, level, min_seeds)
    under = sorted(table[table.interval == "range"].arm.unique())
    if under:
        notes.append(f"underpowered: {', '.join(under)} have fewer than {min_seeds} seeds; the ranges shown are "
                     f"not intervals and support no verdict (run more seeds: [sweep] seeds = {min_seeds})")
    return PairedComparison(table, pairs, baseline, level, min_seeds, notes)
