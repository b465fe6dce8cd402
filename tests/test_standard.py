"""The standard analysis of a sweep degrades law by law: what cannot be fitted is skipped, with its reason."""

from __future__ import annotations

import pytest

from forgetting_laws import load_runs
from forgetting_laws.analyse.standard import FIGURES, STANDARD_FITS, fit_sweep, write_figures
from forgetting_laws.cli import main
from forgetting_laws.store import write_rows

from conftest import REPO


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The demo's ranks 1 and 4 probed at 6 steps: too few points for a P, N law held out at the largest rank."""
    out = tmp_path_factory.mktemp("two-ranks")
    df = load_runs(REPO / "examples" / "demo-runs")
    for run_id, g in df[df["rank"].isin([1, 4]) & df.step.isin([0, 10, 20, 40, 50, 60])].groupby("run_id"):
        write_rows(out / f"{run_id}.parquet", g.to_dict("records"))
    return out


def test_fit_sweep_skips_a_law_it_cannot_fit(two_ranks):
    fits = fit_sweep(load_runs(two_ranks), bootstrap=0)
    assert "inverse_linear" in fits and "kalajdzievski_forget" in fits
    why = fits.skipped["kalajdzievski_forget@rank:largest"]
    assert "5 data points are too few for law 'kalajdzievski_forget' with 7 parameters" in why
    assert set(fits) | set(fits.skipped) == set(STANDARD_FITS)


def test_report_and_figures_go_on_without_the_skipped_law(two_ranks, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(two_ranks), "-o", str(out), "--figures", str(tmp_path / "figs"), "--bootstrap", "0"]) == 0
    assert "skipped law kalajdzievski_forget@rank:largest: 5 data points" in capsys.readouterr().err
    assert (tmp_path / "figs" / "fig2_forgetting_vs_ft.png").exists()
    assert not (tmp_path / "figs" / "holdout_rank.png").exists()
    text = out.read_text()
    assert "Laws not fitted" in text and "too few for law &#x27;kalajdzievski_forget&#x27;" in text
    assert "The inverse-linear law against its alternatives" in text


def test_analysis_script_explains_a_missing_figure(two_ranks, tmp_path):
    from forgetting_laws.analyse.standard import figure_script

    with pytest.raises(SystemExit, match=r"cannot give holdout_rank: kalajdzievski_forget@rank:largest: 5 data points"):
        figure_script("holdout_rank", [str(two_ranks), "-o", str(tmp_path), "--bootstrap", "0"])


def test_write_figures_uses_the_fits_policy(tmp_path):
    df = load_runs(REPO / "examples" / "demo-runs")
    fits = fit_sweep(df, names=["inverse_linear"], min_step=8)
    written = write_figures(df, fits, tmp_path, formats=("png",))
    assert set(written) == {n for n, f in FIGURES.items() if f.available(df, fits)} >= {"fig2_forgetting_vs_ft"}
