"""A single self-contained HTML report of a sweep, fit for a paper's appendix: the settings (what
varies across runs, what is fixed), the runs (and those that diverged or failed), the fitted laws,
the figures at full width."""

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

__all__ = ["write_report", "runs_table", "settings_table", "unfinished_runs"]

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left} .settings td,.settings th{text-align:left} pre{background:#f7f7f7;padding:8px;font-size:0.8em;overflow-x:auto}
.warn{color:#a33} .verdict{font-weight:600} figure{display:block;margin:1.5em 0;max-width:100%}
figure img{width:100%;max-width:100%;height:auto} figcaption{font-size:0.9em;color:#444}
"""


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: run_id, r, P, steps, first and last losses, wall time."""
    ordered = df.sort_values("step")
    first, last = ordered.groupby("run_id").first(), ordered.groupby("run_id").last()
    table = pd.DataFrame({
        "r": last["rank"], "P": last["trainable_params"], "lr": last["lr"], "seed": last["seed"],
        "N": last["step"], "L_ft at 0": first["ft_loss"], "L_ft at N": last["ft_loss"],
        "L_f at 0": first["forget_loss"], "L_f at N": last["forget_loss"],
        "agreement at N": last["agreement"], "wall s": last["wall_s"].round(1),
    })
    return table.sort_values(["r", "lr", "seed"]).rename_axis("run_id").reset_index()


#: Columns measured along a run, not settings of it.
_MEASURED = {"run_id", "step", "tokens_seen", "ft_loss", "ft_train_loss", "forget_loss", "forget_kl", "ref_loss",
             "agreement", "wall_s", "schema_version"}


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _spec_settings(df: pd.DataFrame, runs_dir: Path | None) -> dict[str, dict[str, object]]:
    """run_id -> the resolved spec's fields (``section.field``) of each run of ``df`` with a sidecar."""
    from ..store import read_sidecars

    metas = read_sidecars(runs_dir) if runs_dir is not None and runs_dir.is_dir() else {}
    ids = set(df["run_id"].astype(str))
    return {rid: {k: v for k, v in _flatten(m["spec"]).items() if not k.startswith("grid")}
            for rid, m in metas.items() if rid in ids and isinstance(m.get("spec"), dict)}


def _column_settings(df: pd.DataFrame) -> dict[str, dict[str, object]]:
    """run_id -> the table's columns that hold one value along each run (its settings)."""
    cols = [c for c in df.columns if c not in _MEASURED and not str(c).startswith(("lmeval_", "refusal_"))
            and df[c].notna().any()]
    runs = df.groupby("run_id")
    constant = [c for c in cols if (runs[c].nunique(dropna=False) <= 1).all()]
    return {str(rid): row for rid, row in runs[constant].first().to_dict("index").items()}


def _show(value: object) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if pd.isna(value) else f"{value:g}" if isinstance(value, float) else str(value)


def settings_table(df: pd.DataFrame, runs_dir: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(varying, fixed): the settings that take several values across the runs of ``df``, each with
    its values, and those that take one. From the runs' resolved specs (``RUNS_DIR/_meta/*.json``)
    where they exist, else from the table's columns that hold one value along each run."""
    per_run = _spec_settings(df, Path(runs_dir) if runs_dir else None) or _column_settings(df)
    frame = pd.DataFrame.from_dict(per_run, orient="index")
    rows = {c: sorted({_show(v) for v in frame[c]}, key=_natural) for c in frame.columns}
    varying = [(c, ", ".join(v)) for c, v in rows.items() if len(v) > 1]
    fixed = [(c, v[0]) for c, v in rows.items() if len(v) == 1 and v[0] != ""]
    return (pd.DataFrame(varying, columns=["setting", "values"]), pd.DataFrame(fixed, columns=["setting", "value"]))


def _natural(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def unfinished_runs(runs_dir: str | Path | None) -> list[tuple[str, str, str]]:
    """(run_id, status, error line) of each run of ``runs_dir`` whose sidecar says it diverged or failed."""
    from ..store import read_sidecars

    if runs_dir is None or not Path(runs_dir).is_dir():
        return []
    return [(rid, m["status"], str(m.get("error") or ("non-finite loss; its rows so far are kept"
                                                      if m["status"] == "diverged" else "no error recorded")))
            for rid, m in sorted(read_sidecars(Path(runs_dir)).items()) if m.get("status") in ("diverged", "failed")]


def _table_html(table: pd.DataFrame) -> str:
    return table.to_html(index=False) if len(table) else "<p>(none)</p>"


def _settings_section(df: pd.DataFrame, runs_dir: str | Path | None) -> str:
    varying, fixed = settings_table(df, runs_dir)
    return (f"<h2>Settings</h2><h3>What varies across the runs</h3><div class='settings'>{_table_html(varying)}</div>"
            f"<h3>What is fixed</h3><div class='settings'>{_table_html(fixed)}</div>")


def _unfinished_section(runs_dir: str | Path | None) -> str:
    runs = unfinished_runs(runs_dir)
    if not runs:
        return ""
    items = "".join(f"<li><b>{html.escape(r)}</b> {html.escape(s)}: {html.escape(e)}</li>" for r, s, e in runs)
    return (f"<h3>Runs that diverged or failed</h3><p>Failed runs have no rows here; diverged runs keep the "
            f"rows measured before the loss became non-finite.</p><ul class='warn'>{items}</ul>")


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


def _values(df: pd.DataFrame, col: str) -> str:
    values = df[col].dropna().unique() if col in df else []
    return ", ".join(map(str, values)) if len(values) else "(not recorded)"


def write_report(df: pd.DataFrame, fits: dict[str, FitResult], figures: dict[str, list[Path]],
                 out: str | Path, runs_dir: str | Path | None = None) -> Path:
    """Write ``out`` (HTML, figures embedded) and return its path. ``runs_dir`` (a runs folder)
    supplies the runs' resolved specs and the runs that diverged or failed."""
    out = Path(out)
    figs = "".join(
        f"<figure><img src='{_img(paths[0])}' alt='{name}'><figcaption>{html.escape(FIGURES[name].caption)}"
        f"</figcaption></figure>" for name, paths in figures.items() if paths and paths[0].suffix == ".png")
    body = (
        f"<h1>Forgetting sweep: {html.escape(_values(df, 'sweep'))}</h1>"
        f"<p>{df.run_id.nunique()} runs, {len(df)} probe rows; model {html.escape(_values(df, 'model'))}, "
        f"fine-tuned on {html.escape(_values(df, 'dataset'))}, forgetting measured on "
        f"{html.escape(_values(df, 'reference'))}. Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>"
        f"<p>Notation: L_ft, the fine-tuning loss (held out); L_f, the forgetting loss (on the reference "
        f"corpus); P, the fine-tuned parameters; N, the update steps; r, the LoRA rank.</p>"
        f"{_settings_section(df, runs_dir)}"
        f"<h2>Runs</h2>{runs_table(df).to_html(index=False, float_format=lambda v: f'{v:.4g}')}"
        f"{_unfinished_section(runs_dir)}"
        f"<h2>Fitted laws</h2><p>Analysis policy: {html.escape(_policy(fits))}.</p>"
        f"{''.join(_fit_section(n, r) for n, r in fits.items())}{_law_test_section(fits)}{_skipped_section(fits)}"
        f"<h2>Figures</h2>{figs}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>forgetting-laws report"
                   f"</title><style>{_CSS}</style></head><body>{body}</body></html>")
    return out
