"""Text and HTML reports of a fit result (lmfit ``fit_report`` style), and its one-line verdict.

The functions read a :class:`~forgetting_laws.analyse.result.FitResult` by its attributes and
import nothing from the result module, so the two modules do not import each other.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

__all__ = ["text_report", "html_report", "verdict", "holdout_headline"]

FitResult = Any  # a forgetting_laws.analyse.result.FitResult, read by attribute


def _formula(res: FitResult) -> str:
    try:
        return res.law.formula
    except ValueError:  # a user law that is not registered here
        return "(law not registered in this session)"


def _param_rows(res: FitResult) -> list[tuple[str, str, str, str]]:
    """(name, value, stderr, interval); a parameter the data do not pin down shows why instead."""
    rows = []
    for p, v in res.params.items():
        if p in res.unidentified:
            rows.append((p, "not identified", "", res.unidentified[p]))
            continue
        se = res.stderr.get(p, float("nan"))
        lo, hi = res.ci.get(p, (float("nan"), float("nan")))
        rel = f" ({abs(se / v):.2%})" if v and np.isfinite(se) else ""
        interval = f"[{lo:.5g}, {hi:.5g}]" if np.isfinite(lo) and np.isfinite(hi) else "none"
        held = p in getattr(res.law, "gauge", ()) if _law_known(res) else False
        rows.append((p, f"{v:.6g}", "held fixed (gauge)" if held else f"+/- {se:.4g}{rel}", interval))
    return rows


def _law_known(res: FitResult) -> bool:
    try:
        res.law
    except ValueError:
        return False
    return True


def _metric_rows(res: FitResult) -> list[tuple[str, str]]:
    m = res.metrics
    keys = ["n", "objective", "constant_objective", "r2", "rmse", "mae", "are", "loglik", "aic", "bic"]
    rows = [(k, f"{m[k]:.6g}" if isinstance(m[k], float) else str(m[k])) for k in keys if k in m]
    outputs = m.get("outputs", {})
    if len(outputs) > 1:
        rows += [(f"{name}: R2, RMSE", f"{o['r2']:.4f}, {o['rmse']:.4g}") for name, o in outputs.items()]
    rows.append(("likelihood", f"{m.get('likelihood')} on {m.get('likelihood_scale')}"))
    for i, c in m.get("rank_corr", {}).items():
        pval = m.get("rank_corr_p", {}).get(i, float("nan"))
        rows.append((f"spearman(resid, {i})", f"{c:+.3f} (p = {pval:.2g})"))
    return rows


def _holdout_rows(res: FitResult) -> list[tuple[str, str]]:
    h = res.metrics.get("holdout")
    if not h:
        return []
    return [(k, f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in h.items() if k != "baselines"] + [
        (f"baseline: {b['name']}", f"ARE {b['are']:.4g}") for b in h.get("baselines", [])]


def _correl_rows(res: FitResult, min_correl: float) -> list[tuple[str, str]]:
    names, c = list(res.params), res.correlation
    pairs = [(abs(c[a, b]), names[a], names[b], c[a, b]) for a in range(len(names))
             for b in range(a + 1, len(names)) if np.isfinite(c[a, b]) and abs(c[a, b]) >= min_correl]
    return [(f"C({a}, {b})", f"{v:+.4f}") for _, a, b, v in sorted(pairs, reverse=True)]


def _header(res: FitResult) -> list[tuple[str, str]]:
    s = res.start
    noise = res.noise.describe() if res.noise else f"none: {res.noise_note}"
    return [
        ("law", res.law_name), ("formula", _formula(res)),
        ("policy", res.policy.describe()),
        ("data", f"y = {', '.join(res.y) or 'y'}; " + ", ".join(f"{k} = {v}" for k, v in res.x.items())),
        ("starts", f"{s.get('n_starts', '?')} scored, {s.get('n_refined', '?')} refined, "
                   f"best from start #{s.get('index', '?')}"),
        ("intervals", f"{res.interval_method}: {res.interval_note}"),
        ("noise", noise),
    ]


def text_report(res: FitResult, min_correl: float = 0.3) -> str:
    """lmfit-style text report."""
    lines = ["[[Fit]]"] + [f"    {k:<12} {v}" for k, v in _header(res)]
    lines.append(f"    {'verdict':<12} {verdict(res)}")
    lines.append(f"[[Variables]] ({res.ci_level:.0%} intervals, {res.interval_method})")
    lines += [f"    {p:<9} {v:>14} {se:<24} {ci}" for p, v, se, ci in _param_rows(res)]
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
             f"<p><b>{html.escape(verdict(res))}</b></p>",
             "<h4>Parameters</h4>", _table(_param_rows(res), ("name", "value", "std. error",
                                                             f"{res.ci_level:.0%} interval")),
             "<h4>Metrics</h4>", _table(_metric_rows(res))]
    if _holdout_rows(res):
        parts += ["<h4>Holdout</h4>", _table(_holdout_rows(res))]
    if res.warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in res.warnings)
        parts += ["<h4>Warnings</h4>", f"<ul>{items}</ul>"]
    return "<div>" + "".join(parts) + "</div>"


def _words(r2: float) -> str:
    return ("fits well" if r2 >= 0.97 else "fits acceptably" if r2 >= 0.9 else
            "fits poorly" if r2 >= 0.5 else "does not describe these data")


def holdout_headline(res: FitResult) -> str:
    """Held-out error and the coverage of the prediction interval, in one sentence ('' without a holdout)."""
    h = res.metrics.get("holdout")
    if not h:
        return ""
    text = f"On held-out points ({h['spec']}, n = {h['n']}) its mean absolute relative error is {h['are']:.2%}"
    if h.get("rise_are") is not None:
        text += f" ({h['rise_are']:.0%} of the forgetting rise)"
    if h.get("coverage") is not None:
        text += (f"; its {res.ci_level:.0%} prediction interval covers {h['covered']} of {h['n']} "
                 f"({h['coverage']:.0%})")
    else:
        text += "; no prediction interval (" + h.get("coverage_note", "").removeprefix(
            "this fit has no prediction interval: ") + ")"
    for b in h.get("baselines", []):
        text += f"; {b['name']}: {b['are']:.2%}"
    return text + "."


def verdict(res: FitResult) -> str:
    """A plain-language judgement of a fit's quality, per output, with its held-out record."""
    outputs = res.metrics.get("outputs") or {"y": {"r2": res.metrics.get("r2", float("nan"))}}
    if len(outputs) > 1:
        text = "; ".join(f"{name}: R² = {o['r2']:.3f}, the law {_words(o['r2'])}" for name, o in outputs.items()) + "."
    else:
        r2 = next(iter(outputs.values()))["r2"]
        text = f"R² = {r2:.3f}: the law {_words(r2)}."
    held = holdout_headline(res)
    if held:
        text += " " + held
    if res.unidentified:
        text += (f" {len(res.unidentified)} parameter(s) not identified ({', '.join(res.unidentified)}): "
                 "read the law's predictions, not those parameters' values.")
    return text
