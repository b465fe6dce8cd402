"""One analysis policy: every entry point starts from the same defaults and gives the same fit."""

from __future__ import annotations

import argparse
import json

import pytest

from forgetting_laws import load_runs
from forgetting_laws.analyse.compare import compare
from forgetting_laws.analyse.fit import fit
from forgetting_laws.analyse.policy import DEFAULT_POLICY, AnalysisPolicy
from forgetting_laws.analyse.result import FitResult
from forgetting_laws.analyse.standard import fit_sweep
from forgetting_laws.cli import build_parser, main
from forgetting_laws.errors import FitDataError

from conftest import REPO

DEMO = REPO / "examples" / "demo-runs"
IL = {"x": {"L_ft": "ft_loss"}, "y": "forget_loss"}


@pytest.fixture(scope="module")
def demo():
    return load_runs(DEMO)


def _subcommand(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["fit", "figures", "report", "compare", "demo"])
def test_cli_option_defaults_come_from_the_policy(command):
    required = {"fit": ["src", "--law", "power_law"], "figures": ["runs", "-o", "x"], "report": ["runs", "-o", "x"],
                "compare": ["runs"], "demo": []}[command]
    args = _subcommand(command).parse_args(required)
    p = DEFAULT_POLICY
    assert (args.min_step, args.loss, args.delta, args.bootstrap, args.level, args.seed, args.jobs) == (
        p.min_step, p.loss, p.delta, p.bootstrap, p.ci_level, p.seed, p.n_jobs)


def test_every_entry_point_gives_the_same_inverse_linear_fit(demo, tmp_path, capsys):
    """The API, fit_sweep (figures, report, demo), compare and the fit command agree on the demo runs
    (before: 1 vs 8 vs 0 as first step, 1000 vs 200 bootstrap resamples)."""
    api = fit(demo, "inverse_linear", **IL)
    swept = fit_sweep(demo, names=["inverse_linear"])["inverse_linear"]
    compared = compare(demo).fits["lora"]
    out = tmp_path / "il.json"
    assert main(["fit", str(DEMO), "--law", "inverse_linear", "--x", "L_ft=ft_loss", "--y", "forget_loss",
                 "-o", str(out)]) == 0
    cli = FitResult.from_json(out)
    for other in (swept, compared, cli):
        assert other.params == pytest.approx(api.params, rel=1e-9)
        for name in api.ci:
            assert other.ci[name] == pytest.approx(api.ci[name], rel=1e-9)
        assert other.policy == api.policy == DEFAULT_POLICY


def test_result_records_the_policy_and_the_report_prints_it(demo):
    policy = DEFAULT_POLICY.updated(min_step=8, bootstrap=0)
    res = fit(demo, "inverse_linear", policy=policy, **IL)
    assert res.policy == policy and json.loads(res.to_json())["policy"]["min_step"] == 8
    assert "steps >= 8, loss huber_log (delta 0.001), no bootstrap, 95% intervals" in res.report()
    assert res.metrics["n"] == int((demo.step >= 8).sum())


def test_keyword_overrides_and_unknown_fields(demo):
    res = fit(demo, "inverse_linear", min_step=4, loss="mse", **IL)
    assert (res.policy.min_step, res.policy.loss) == (4, "mse")
    with pytest.raises(FitDataError, match=r"\['bootsrap'\] are not analysis policy fields"):
        fit(demo, "inverse_linear", bootsrap=10, **IL)


@pytest.mark.parametrize("field, value, pattern", [
    ("loss", "l1", r"loss='l1' is not supported"), ("bootstrap", -1, r"bootstrap=-1 must be an integer >= 0"),
    ("min_step", 1.5, r"min_step=1.5 must be an integer"), ("ci_level", 1.0, r"ci_level=1.0 must lie in \(0, 1\)"),
    ("min_clusters", 1, r"min_clusters=1 must be an integer >= 2"), ("n_jobs", 0, r"n_jobs=0 must be an integer >= 1"),
])
def test_bad_policy_fields_are_refused(field, value, pattern):
    with pytest.raises(FitDataError, match=pattern):
        AnalysisPolicy(**{field: value})


def test_step_zero_error_names_the_fix(demo, capsys):
    with pytest.raises(FitDataError, match=r"input 'N' \(column 'step'\) of law 'kalajdzievski_forget' must be > 0 .* "
                                           r"4 rows have step <= 0: leave out step 0 with min_step=1 \(CLI: --min-step 1\)"):
        fit(demo, "kalajdzievski_forget", x={"P": "trainable_params", "N": "step"}, min_step=0)
    assert main(["fit", str(DEMO), "--law", "kalajdzievski_forget", "--x", "P=trainable_params", "--x", "N=step",
                 "--y", "forget_loss", "--min-step", "0", "--bootstrap", "0"]) == 2
    assert "--min-step 1" in capsys.readouterr().err
