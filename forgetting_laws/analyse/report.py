"""A single self-contained HTML report of a sweep: settings, runs, fitted laws, figures."""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .fit_report import verdict
from .result import FitResult
from .standard import FIGURES, STANDARD_FITS

__all__ = ["write_report", "runs_table"]

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left} pre{background:#f7f7f7;padding:8px;font-size:0.8em;overflow-x:auto}
.warn{color:#a33} .verdict{font-weight:600} figure{display:inline-block;margin:0.5em;max-width:48%}
figure img{max-width:100%} figcaption{font-size:0.8em;color:#555}
"""


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: rank, P, steps, first and last losses, wall time."""
    first = df.sort_values("step").groupby("run_id").first()
    last = df.sort_values("step").groupby("run_id").last()
    table = pd.DataFrame({
        "rank": last["rank"], "P": last["trainable_params"], "lr": last["lr"], "seed": last["seed"],
        "steps": last["step"], "ft_loss 0": first["ft_loss"], "ft_loss end": last["ft_loss"],
        "forget_loss 0": first["forget_loss"], "forget_loss end": last["forget_loss"],
        "agreement end": last["agreement"], "wall s": last["wall_s"].round(1),
    })
    return table.sort_values(["rank", "lr", "seed"])


def _settings(runs_dir: Path) -> dict:
    from ..store import read_sidecars

    metas = read_sidecars(runs_dir) if runs_dir.is_dir() else {}
    return next(iter(metas.values()), {})


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _param_row(res: FitResult, p: str, v: float) -> str:
    if p in res.unidentified:
        return (f"<tr><td>{html.escape(p)}</td><td colspan='4' class='warn'>not identified: "
                f"{html.escape(res.unidentified[p])}</td></tr>")
    lo, hi = res.ci[p]
    return (f"<tr><td>{html.escape(p)}</td><td>{v:.6g}</td><td>{res.stderr.get(p, float('nan')):.3g}</td>"
            f"<td>{lo:.6g}</td><td>{hi:.6g}</td></tr>")


def _fit_section(name: str, res: FitResult) -> str:
    desc = STANDARD_FITS[name].description if name in STANDARD_FITS else ""
    rows = "".join(_param_row(res, p, v) for p, v in res.params.items())
    m = res.metrics
    metrics = ", ".join(f"{k} = {m[k]:.4g}" for k in ("r2", "rmse", "aic", "bic", "n") if k in m)
    warns = "".join(f"<li class='warn'>{html.escape(w)}</li>" for w in res.warnings)
    return (f"<h3>{html.escape(name)}</h3><p>{html.escape(desc)}</p>"
            f"<p class='verdict'>{html.escape(verdict(res))}</p>"
            f"<p>Intervals: {html.escape(res.interval_method)} ({html.escape(res.interval_note)}).</p>"
            f"<table><tr><th>parameter</th><th>value</th><th>stderr</th>"
            f"<th>{res.ci_level:.0%} low</th><th>high</th></tr>{rows}</table>"
            f"<p>{metrics}</p>{'<ul>' + warns + '</ul>' if warns else ''}"
            f"<details><summary>full fit report</summary><pre>{html.escape(res.report())}</pre></details>")


def _law_test_section(fits: dict) -> str:
    test = getattr(fits, "law_test", None)
    if test is None:
        note = getattr(fits, "law_test_note", "")
        return f"<h3>The inverse-linear law against its alternatives</h3><p>Not tested: {html.escape(note)}</p>" if note else ""
    rows = "".join(f"<tr><td>{html.escape(a.name)}</td><td>{html.escape(a.formula)}</td><td>{a.n_params}</td>"
                   f"<td>{a.aic - test.null_aic:+.1f}</td><td>F({a.df[0]}, {a.df[1]}) = {a.f:.3g}</td>"
                   f"<td>{a.p_value:.2g}</td></tr>" for a in test.alternatives)
    slopes = ", ".join(f"{html.escape(k)}: {v:.3g}" for k, v in test.per_run_slopes.items())
    return (f"<h3>The inverse-linear law against its alternatives</h3>"
            f"<p class='verdict'>{html.escape(test.answer)}</p>"
            f"<p>Least squares: c = {test.ols['c']:.4g}, s = {test.ols['s']:.4g}; Huber on log residuals: "
            f"c = {test.huber['c']:.4g}, s = {test.huber['s']:.4g}. Per-run slopes: {slopes}.</p>"
            f"<table><tr><th>alternative</th><th>formula</th><th>parameters</th><th>AIC minus the law's</th>"
            f"<th>F test against the law</th><th>p</th></tr>{rows}</table>")


def _skipped_section(fits: dict) -> str:
    skipped = getattr(fits, "skipped", {})
    if not skipped:
        return ""
    items = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(why)}</li>" for n, why in skipped.items())
    return f"<h3>Laws not fitted</h3><ul class='warn'>{items}</ul>"


def _policy(fits: dict) -> str:
    policy = getattr(fits, "policy", None) or next((r.policy for r in fits.values()), None)
    return policy.describe() if policy else "(no fits)"


def write_report(df: pd.DataFrame, fits: dict[str, FitResult], figures: dict[str, list[Path]],
                 out: str | Path, runs_dir: str | Path | None = None) -> Path:
    """Write ``out`` (HTML, figures embedded) and return its path."""
    out = Path(out)
    meta = _settings(Path(runs_dir)) if runs_dir else {}
    spec = meta.get("spec", {})
    settings = "".join(f"<tr><td>[{html.escape(s)}]</td><td>{html.escape(json.dumps(v))}</td></tr>"
                       for s, v in spec.items() if s != "grid")
    figs = "".join(
        f"<figure><img src='{_img(paths[0])}' alt='{name}'><figcaption>{html.escape(FIGURES[name].caption)}"
        f"</figcaption></figure>" for name, paths in figures.items() if paths and paths[0].suffix == ".png")
    body = (
        f"<h1>Forgetting sweep: {html.escape(str(df['sweep'].iloc[0]))}</h1>"
        f"<p>{df.run_id.nunique()} runs, {len(df)} probe rows; model {html.escape(str(df['model'].iloc[0]))}, "
        f"fine-tuned on {html.escape(str(df['dataset'].iloc[0]))}, forgetting measured on "
        f"{html.escape(str(df['reference'].iloc[0]))}. Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>"
        f"<h2>Settings (first run)</h2><table>{settings}</table>"
        f"<h2>Runs</h2>{runs_table(df).to_html(float_format=lambda v: f'{v:.4g}')}"
        f"<h2>Fitted laws</h2><p>Analysis policy: {html.escape(_policy(fits))}.</p>"
        f"{''.join(_fit_section(n, r) for n, r in fits.items())}{_law_test_section(fits)}{_skipped_section(fits)}"
        f"<h2>Figures</h2>{figs}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>forgetting-laws report"
                   f"</title><style>{_CSS}</style></head><body>{body}</body></html>")
    return out
