"""Text and HTML reports of a fit result (lmfit ``fit_report`` style).

The functions read a :class:`~forgetting_laws.analyse.result.FitResult` by its attributes and
import nothing from the result module, so the two modules do not import each other.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

FitResult = Any  # a forgetting_laws.analyse.result.FitResult, read by attribute


def _formula(res: FitResult) -> str:
    try:
        return res.law.formula
    except ValueError:  # a user law that is not registered here
        return "(law not registered in this session)"


def _param_rows(res: FitResult) -> list[tuple[str, str, str, str]]:
    rows = []
    for p, v in res.params.items():
        se = res.stderr.get(p, float("nan"))
        lo, hi = res.ci.get(p, (float("nan"), float("nan")))
        rel = f" ({abs(se / v):.2%})" if v and np.isfinite(se) else ""
        rows.append((p, f"{v:.6g}", f"+/- {se:.4g}{rel}", f"[{lo:.5g}, {hi:.5g}]"))
    return rows


def _metric_rows(res: FitResult) -> list[tuple[str, str]]:
    m = res.metrics
    keys = ["n", "objective", "r2", "rmse", "mae", "are", "loglik", "aic", "bic"]
    rows = [(k, f"{m[k]:.6g}" if isinstance(m[k], float) else str(m[k])) for k in keys if k in m]
    rows.append(("likelihood", f"{m.get('likelihood')} on {m.get('likelihood_scale')}"))
    for i, c in m.get("rank_corr", {}).items():
        pval = m.get("rank_corr_p", {}).get(i, float("nan"))
        rows.append((f"spearman(resid, {i})", f"{c:+.3f} (p = {pval:.2g})"))
    return rows


def _holdout_rows(res: FitResult) -> list[tuple[str, str]]:
    h = res.metrics.get("holdout")
    if not h:
        return []
    return [(k, f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in h.items()]


def _correl_rows(res: FitResult, min_correl: float) -> list[tuple[str, str]]:
    names, c = list(res.params), res.correlation
    pairs = [(abs(c[a, b]), names[a], names[b], c[a, b]) for a in range(len(names))
             for b in range(a + 1, len(names)) if np.isfinite(c[a, b]) and abs(c[a, b]) >= min_correl]
    return [(f"C({a}, {b})", f"{v:+.4f}") for _, a, b, v in sorted(pairs, reverse=True)]


def _header(res: FitResult) -> list[tuple[str, str]]:
    s = res.start
    n_boot = res.draws.shape[0]
    return [
        ("law", res.law_name), ("formula", _formula(res)),
        ("loss", res.loss + (f" (delta = {res.delta:g})" if res.loss == "huber_log" else "")),
        ("data", f"y = {', '.join(res.y) or 'y'}; " + ", ".join(f"{k} = {v}" for k, v in res.x.items())),
        ("starts", f"{s.get('n_starts', '?')} scored, {s.get('n_refined', '?')} refined, "
                   f"best from start #{s.get('index', '?')}"),
        ("uncertainty", f"bootstrap, {n_boot} resamples of groups, {res.ci_level:.0%} percentile CI"
                        if n_boot else f"Gauss-Newton approximation, {res.ci_level:.0%} normal CI"),
    ]


def text_report(res: FitResult, min_correl: float = 0.3) -> str:
    """lmfit-style text report."""
    lines = ["[[Fit]]"] + [f"    {k:<12} {v}" for k, v in _header(res)]
    lines.append("[[Variables]]")
    lines += [f"    {p:<9} {v:>12} {se:<24} CI {ci}" for p, v, se, ci in _param_rows(res)]
    lines.append("[[Metrics]]")
    lines += [f"    {k:<22} {v}" for k, v in _metric_rows(res)]
    if _holdout_rows(res):
        lines.append("[[Holdout]]")
        lines += [f"    {k:<22} {v}" for k, v in _holdout_rows(res)]
    correl = _correl_rows(res, min_correl)
    if correl:
        lines.append(f"[[Correlations]] (unreported correlations are < {min_correl})")
        lines += [f"    {k:<24} = {v}" for k, v in correl]
    if res.warnings:
        lines.append("[[Warnings]]")
        lines += [f"    - {w}" for w in res.warnings]
    return "\n".join(lines)


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...] | None = None) -> str:
    esc = html.escape
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def html_report(res: FitResult) -> str:
    """HTML report for Jupyter."""
    parts = [f"<h4>Fit of {html.escape(res.law_name)}</h4>", _table(_header(res)),
             "<h4>Parameters</h4>", _table(_param_rows(res), ("name", "value", "std. error", "CI")),
             "<h4>Metrics</h4>", _table(_metric_rows(res))]
    if _holdout_rows(res):
        parts += ["<h4>Holdout</h4>", _table(_holdout_rows(res))]
    if res.warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in res.warnings)
        parts += ["<h4>Warnings</h4>", f"<ul>{items}</ul>"]
    return "<div>" + "".join(parts) + "</div>"
