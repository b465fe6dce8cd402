"""The CLI writes the figures and a self-contained report; the report states each law's R^2."""

import re

import pytest

from forgetting_laws.cli import main
from forgetting_laws.store import write_rows
from forgetting_laws.analyse.standard import FIGURES, STANDARD_FITS


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    from conftest import make_synthetic_runs

    out = tmp_path_factory.mktemp("runs")
    # six runs (enough for a cluster bootstrap) with lm_eval probe columns, so every figure is drawn
    df = make_synthetic_runs(ranks=(4, 8, 16, 64, 128, 256))
    df["lmeval_fl_arc_mini_acc"] = 0.6 - 0.1 * df["forget_loss"]
    df["lmeval_fl_arc_mini_agree"] = 1.2 - 0.5 * df["forget_loss"]
    df["refusal_rate"] = 0.5
    for run_id, g in df.groupby("run_id"):
        write_rows(out / f"{run_id}.parquet", g.to_dict("records"))
    return out


def test_figures_cli_writes_every_figure(runs_dir, tmp_path, capsys):
    assert main(["figures", str(runs_dir), "-o", str(tmp_path), "--bootstrap", "5"]) == 0
    for name in FIGURES:
        assert (tmp_path / f"{name}.png").stat().st_size > 5000, name
        assert (tmp_path / f"{name}.pdf").exists(), name


def test_report_cli_is_self_contained(runs_dir, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(runs_dir), "-o", str(out), "--bootstrap", "5"]) == 0
    text = out.read_text()
    assert text.count("data:image/png;base64,") == len(FIGURES)
    assert "src='http" not in text and 'src="http' not in text
    for name in STANDARD_FITS:
        assert f"<h3>{name}</h3>" in text
    assert len(re.findall(r"<p class='verdict'>R² = \d\.\d{3}: the law", text)) == len(STANDARD_FITS)
    assert "r256" in text  # the runs table


def test_report_says_plainly_when_a_law_fits_badly(synthetic_runs, tmp_path):
    from forgetting_laws.analyse.fit import fit
    from forgetting_laws.analyse.standard import verdict

    df = synthetic_runs[synthetic_runs.step > 0].copy()
    df["forget_loss"] = df["forget_loss"].sample(frac=1, random_state=0).to_numpy()  # destroy the relation
    res = fit(df, "inverse_linear", x={"L_ft": "ft_loss"}, y="forget_loss", bootstrap=0)
    assert "does not describe these data" in verdict(res) or "fits poorly" in verdict(res)


def test_analysis_script_regenerates_one_figure(runs_dir, tmp_path):
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["fig2", str(runs_dir), "-o", str(tmp_path), "--bootstrap", "10"]
    try:
        from conftest import REPO

        runpy.run_path(str(REPO / "analysis" / "fig2_forgetting_vs_ft.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert (tmp_path / "fig2_forgetting_vs_ft.png").exists()
