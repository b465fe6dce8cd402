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


def _copy_runs(runs_dir, tmp_path):
    import shutil

    out = tmp_path / "runs"
    shutil.copytree(runs_dir, out, ignore=shutil.ignore_patterns("_fits"))
    return out


def test_report_then_figures_reuse_the_fits_until_a_run_changes(runs_dir, tmp_path, monkeypatch, capsys):
    import pandas as pd

    from forgetting_laws.analyse import standard

    calls = []
    real = standard.fit_sweep
    monkeypatch.setattr(standard, "fit_sweep", lambda *a, **k: calls.append(1) or real(*a, **k))
    runs = _copy_runs(runs_dir, tmp_path)
    opts = ["--bootstrap", "0", "--quiet"]
    assert main(["report", str(runs), "-o", str(tmp_path / "out" / "report.html"), *opts]) == 0
    assert len(calls) == 1 and (runs / "_fits" / "fits.json").exists()
    assert main(["figures", str(runs), "-o", str(tmp_path / "figs"), *opts]) == 0
    assert len(calls) == 1, "figures refitted what the report had fitted"
    assert f"fits reused from {runs / '_fits' / 'fits.json'}" in capsys.readouterr().err
    path = sorted(runs.glob("*.parquet"))[0]
    frame = pd.read_parquet(path)
    frame.loc[frame.index[-1], "forget_loss"] += 0.01
    write_rows(path, frame.to_dict("records"))
    assert main(["figures", str(runs), "-o", str(tmp_path / "figs"), "--force", *opts]) == 0
    assert len(calls) == 2, "an edited run did not refit"
    assert main(["figures", str(runs), "-o", str(tmp_path / "figs"), "--force", *opts, "--min-step", "50"]) == 0
    assert len(calls) == 3, "another policy did not refit"


def test_nothing_is_overwritten_without_force(runs_dir, tmp_path, capsys):
    out = tmp_path / "report.html"
    out.write_text("mine")
    assert main(["report", str(runs_dir), "-o", str(out), "--bootstrap", "5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{out} exists" in err and "--force" in err
    assert out.read_text() == "mine"
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "residuals.png").write_text("mine")
    assert main(["figures", str(runs_dir), "-o", str(tmp_path / "figs"), "--bootstrap", "5", "--quiet"]) == 2
    assert "residuals.png exists" in capsys.readouterr().err
    fits = tmp_path / "fits.json"
    fits.write_text("{}")
    assert main(["fit", str(runs_dir), "--law", "inverse_linear", "--x", "L_ft=ft_loss", "--y", "forget_loss",
                 "--bootstrap", "0", "-o", str(fits)]) == 2
    assert f"{fits} exists; pass --force to overwrite" in capsys.readouterr().err
    assert main(["fit", str(runs_dir), "--law", "inverse_linear", "--x", "L_ft=ft_loss", "--y", "forget_loss",
                 "--bootstrap", "0", "-o", str(fits), "--force", "--quiet"]) == 0
    assert '"law_name": "inverse_linear"' in fits.read_text()


def _own_csv(tmp_path, **changes):
    """A table of one's own: other column names, no schema_version, no optional columns."""
    from conftest import make_synthetic_runs

    df = make_synthetic_runs(ranks=(4, 16, 64))
    df = df[["run_id", "rank", "step", "trainable_params", "ft_loss", "forget_loss", "model", "lr"]]
    df = df.rename(columns={"step": "iter", "trainable_params": "params"})
    for col, value in changes.items():
        df[col] = value
    path = tmp_path / "mine.csv"
    df.to_csv(path, index=False)
    return path


def test_a_csv_of_ones_own_fits_with_a_column_map(tmp_path, capsys):
    path = _own_csv(tmp_path)
    out = tmp_path / "il.json"
    assert main(["fit", str(path), "--columns", "step=iter", "--law", "inverse_linear", "--x", "L_ft=ft_loss",
                 "--y", "forget_loss", "--bootstrap", "0", "-o", str(out), "--quiet"]) == 0
    assert out.exists()
    report = tmp_path / "report.html"
    assert main(["report", str(path), "--columns", "step=iter,trainable_params=params", "-o", str(report),
                 "--bootstrap", "0", "--quiet"]) == 0
    text = report.read_text()
    assert "<h3>kalajdzievski_forget</h3>" in text and "data:image/png;base64," in text
    assert (tmp_path / "mine.csv.fits" / "fits.json").exists()


def test_a_missing_or_misnamed_column_is_named(tmp_path, capsys):
    path = _own_csv(tmp_path)
    assert main(["report", str(path), "-o", str(tmp_path / "r.html"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "lacks the required column(s) step, trainable_params" in err and "--columns step=YOUR_COLUMN" in err
    assert main(["report", str(path), "--columns", "steps=iter", "-o", str(tmp_path / "r.html")]) == 2
    assert "'steps' is not a schema column" in capsys.readouterr().err
    assert main(["figures", str(path), "--columns", "step=iteration", "-o", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "--columns step=iteration: the table has no column 'iteration'" in err and "iter" in err
    assert "Traceback" not in err


def test_by_fits_and_draws_each_group_and_pooling_is_warned_about(tmp_path, capsys):
    import warnings

    import pandas as pd

    from forgetting_laws.analyse.standard import fit_sweep
    from forgetting_laws.analyse.tables import read_source

    path = _own_csv(tmp_path)
    df = pd.read_csv(path)
    sam = df.assign(run_id=df.run_id + "-sam", forget_loss=df.forget_loss * 0.9)
    pd.concat([df.assign(method="lora"), sam.assign(method="sam")]).to_csv(path, index=False)
    table = read_source(path, {"step": "iter", "trainable_params": "params"})
    with pytest.warns(UserWarning, match=r"runs differ in method \(lora, sam\): the laws are fitted to them "
                                         r"pooled; use --by method"):
        fit_sweep(table, names=["inverse_linear"], bootstrap=0)
    out = tmp_path / "figs"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["figures", str(path), "--columns", "step=iter,trainable_params=params", "--by", "method",
                     "-o", str(out), "--bootstrap", "0", "--quiet"]) == 0
    assert (out / "method=lora" / "fig2_forgetting_vs_ft.png").exists()
    assert (out / "method=sam" / "fig2_forgetting_vs_ft.png").exists()
    assert not [w for w in seen if "runs differ" in str(w.message)]


def test_settings_show_what_varies_and_what_is_fixed(synthetic_runs, tmp_path):
    from forgetting_laws.analyse.report import settings_table
    from forgetting_laws.store import write_json

    varying, fixed = settings_table(synthetic_runs)  # from the table's columns
    assert {"rank", "trainable_params"} <= set(varying.setting)
    assert dict(zip(fixed.setting, fixed.value))["model"] == "m" and "lr" in set(fixed.setting)
    assert "forget_loss" not in set(varying.setting) | set(fixed.setting)
    for run_id, g in synthetic_runs.groupby("run_id"):  # from the runs' resolved specs
        write_json(tmp_path / "_meta" / f"{run_id}.json", {"run_id": run_id, "status": "complete", "spec": {
            "lora": {"rank": int(g["rank"].iloc[0]), "alpha": 1.0}, "train": {"lr": 0.001, "max_steps": 260}}})
    varying, fixed = settings_table(synthetic_runs, tmp_path)
    assert list(varying.setting) == ["lora.rank"] and varying["values"].iloc[0] == "8, 16, 64, 256"
    assert set(fixed.setting) == {"lora.alpha", "train.lr", "train.max_steps"}


def test_the_report_names_failed_runs_and_has_one_header_row(synthetic_runs, tmp_path):
    from forgetting_laws.analyse.report import write_report
    from forgetting_laws.store import write_json

    write_json(tmp_path / "_meta" / "r512.json", {"run_id": "r512", "status": "failed",
                                                  "error": "OutOfMemoryError: CUDA out of memory", "spec": {}})
    write_json(tmp_path / "_meta" / "r1024.json", {"run_id": "r1024", "status": "diverged", "spec": {}})
    text = write_report(synthetic_runs, {}, {}, tmp_path / "report.html", runs_dir=tmp_path).read_text()
    assert "<b>r512</b> failed: OutOfMemoryError: CUDA out of memory" in text
    assert "<b>r1024</b> diverged: non-finite loss" in text
    runs = text[text.index("<h2>Runs</h2>"):]
    runs = runs[:runs.index("</thead>")]
    assert runs.count("<tr") == 1 and "<th>run_id</th>" in runs
    assert "Settings (first run)" not in text and "What varies across the runs" in text
