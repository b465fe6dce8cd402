"""The command line as a researcher meets it: from any directory, with overrides, defaults shown."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO
from forgetting_laws import __version__
from forgetting_laws.cli import main
from forgetting_laws.measure.spec import ConfigError, builtin_specs, load_spec
from forgetting_laws.store import sidecar_path


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forgetting_laws.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_version_and_built_in_specs_work_from_any_directory(tmp_path):
    assert _cli("--version", cwd=tmp_path).stdout.strip() == f"forgetting-laws {__version__}"
    listed = _cli("specs", cwd=tmp_path).stdout
    assert {"demo", "reference", "mitigation", "continual"} <= set(builtin_specs()) and "demo" in listed
    out = _cli("sweep", "demo", "--dry-run", "--no-calibrate", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert out.returncode == 0 and "sweep 'demo': 4 runs, 4 to do" in out.stdout, out.stderr
    assert "default: demo" in _cli("demo", "--help", cwd=tmp_path).stdout


def test_an_unknown_spec_names_the_built_in_ones(capsys):
    assert main(["sweep", "nosuchspec", "--dry-run"]) == 2
    assert "sweep spec 'nosuchspec' does not exist; give a TOML file or a built-in spec: " in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "(default: demo-out)" in text and "(default: None)" not in text


def test_set_overrides_are_validated_and_recorded_in_the_run(tiny_spec_file, tmp_path, capsys):
    path = tiny_spec_file(max_steps=2, ranks=(1, 2))
    spec = load_spec(path, ["lora.rank=4", "train.lr=0.02", "probe.steps=[0, 2]"])
    (run,) = spec.expand()  # setting a grid field replaces the axis
    assert (run.lora.rank, run.train.lr, run.probe.steps) == (4, 0.02, [0, 2])
    with pytest.raises(ConfigError, match=r"train.lr = -1.0, must be > 0"):
        load_spec(path, ["train.lr=-1.0"])
    with pytest.raises(ConfigError, match=r"--set 'train.lr' is not section.field=value"):
        load_spec(path, ["train.lr"])
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--quiet", "--set", "train.max_steps=3",
                 "--set", "lora.rank=[1]"]) == 2  # a list for an int field
    assert "lora.rank = [1] has type list, expected int" in capsys.readouterr().err
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--quiet", "--set", "train.max_steps=3"]) == 0
    for r in load_spec(path, ["train.max_steps=3"]).expand():
        meta = json.loads(sidecar_path(tmp_path / "runs", r.run_id).read_text())
        assert meta["spec"]["train"]["max_steps"] == 3


def test_a_runs_folder_is_one_table_to_pandas_polars_and_duckdb(tiny_spec_file, tmp_path):
    import duckdb
    import polars as pl

    path = tiny_spec_file(max_steps=2, ranks=(1,))
    text = path.read_text().replace('"lora.rank" = [1]', '"lora.rank" = [1]\n"method.name" = ["lora", "sam"]')
    path.write_text(text)
    out = tmp_path / "runs"
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--set", "train.save_adapter=true"]) == 0
    frames = {"pandas": pd.read_parquet(out),
              "polars": pl.read_parquet(f"{out}/*.parquet").to_pandas(),
              "duckdb": duckdb.sql(f"select * from read_parquet('{out}/*.parquet')").df()}
    for name, frame in frames.items():
        assert len(frame) == 6 and set(frame.method) == {"lora", "sam"}, name
        assert frame.loc[frame.method == "sam", "sam_rho"].notna().all(), name
        assert frame.loc[frame.method == "lora", "sam_rho"].isna().all(), name


def test_the_public_api_is_one_import_and_does_not_import_torch():
    code = ("import sys, forgetting_laws as fl\n"
            "assert 'torch' not in sys.modules\n"
            "df = fl.load_runs('examples/demo-runs')\n"
            "res = fl.fit(df, 'inverse_linear', x={'L_ft': 'ft_loss'}, y='forget_loss', bootstrap=0)\n"
            "assert isinstance(res, fl.FitResult) and 'inverse_linear' in fl.laws.names()\n"
            "assert callable(fl.plots.forgetting_vs_ft) and callable(fl.plan)\n"
            "assert 'torch' not in sys.modules, 'the analysing API imported torch'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (REPO / "forgetting_laws" / "py.typed").exists()


def test_the_api_reference_builds_from_the_docstrings(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pdoc", "forgetting_laws", "forgetting_laws.analyse",
                           "forgetting_laws.measure", "forgetting_laws.store", "-o", str(tmp_path), "--docformat",
                           "numpy"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "forgetting_laws" / "analyse" / "fit.html").exists()
    assert "prediction_interval" in (tmp_path / "forgetting_laws" / "analyse" / "result.html").read_text()


def test_the_program_prints_warnings_as_one_line_and_leaves_third_party_ones_out(tmp_path):
    code = ("import sys, warnings\n"
            "from forgetting_laws import cli\n"
            "def command(args):\n"
            "    warnings.warn('ours', UserWarning)\n"
            "    exec(\"import warnings\\nwarnings.warn('theirs', FutureWarning)\", {'__name__': 'transformers.utils'})\n"
            "    return 0\n"
            "cli.cmd_specs = command\n"
            "sys.argv = ['forgetting-laws', 'specs']\n"
            "sys.exit(cli.main())\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "warning: ours" in done.stderr and "theirs" not in done.stderr


def test_called_from_python_every_warning_reaches_the_caller(monkeypatch):
    import forgetting_laws.cli as cli

    def command(args):
        exec("import warnings\nwarnings.warn('theirs', FutureWarning)", {"__name__": "transformers.utils"})
        return 0

    monkeypatch.setattr(cli, "cmd_specs", command)
    with pytest.warns(FutureWarning, match="theirs"):
        assert main(["specs"]) == 0
