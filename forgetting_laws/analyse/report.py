"""A single self-contained HTML report of a sweep: settings, runs, fitted laws, figures."""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .result import FitResult
from .standard import FIGURES, STANDARD_FITS, verdict

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
    metas = sorted(runs_dir.glob("*.json")) if runs_dir.is_dir() else []
    return json.loads(metas[0].read_text()) if metas else {}


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _fit_section(name: str, res: FitResult) -> str:
    desc = STANDARD_FITS[name].description if name in STANDARD_FITS else ""
    rows = "".join(
        f"<tr><td>{html.escape(p)}</td><td>{v:.6g}</td><td>{res.stderr.get(p, float('nan')):.3g}</td>"
        f"<td>{res.ci[p][0]:.6g}</td><td>{res.ci[p][1]:.6g}</td></tr>" for p, v in res.params.items())
    m = res.metrics
    metrics = ", ".join(f"{k} = {m[k]:.4g}" for k in ("r2", "rmse", "aic", "bic", "n") if k in m)
    warns = "".join(f"<li class='warn'>{html.escape(w)}</li>" for w in res.warnings)
    return (f"<h3>{html.escape(name)}</h3><p>{html.escape(desc)}</p>"
            f"<p class='verdict'>{html.escape(verdict(res))}</p>"
            f"<table><tr><th>parameter</th><th>value</th><th>stderr</th>"
            f"<th>{res.ci_level:.0%} CI low</th><th>high</th></tr>{rows}</table>"
            f"<p>{metrics}</p>{'<ul>' + warns + '</ul>' if warns else ''}"
            f"<details><summary>full fit report</summary><pre>{html.escape(res.report())}</pre></details>")


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
        f"<h2>Fitted laws</h2>{''.join(_fit_section(n, r) for n, r in fits.items())}"
        f"<h2>Figures</h2>{figs}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>forgetting-laws report"
                   f"</title><style>{_CSS}</style></head><body>{body}</body></html>")
    return out
