"""Tests of the fitting engine: real data, recovery, calibration, bad input, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forgetting_laws.analyse import laws
from forgetting_laws.analyse.fit import FitDataError, FitResult, fit, fit_arrays
from forgetting_laws.cli import main
from forgetting_laws.analyse.laws import LawError

FIXTURES = Path(__file__).resolve().parent / "data"

# Kalajdzievski 2024, Table 1 (see shared/reference/kalajdzievski_constants.md)
CONSTANTS = {
    "openorca": dict(a_f=0.0388e7, a_ft=0.0007e7, b_f=23.6418, b_ft=72.9186, c_ft=0.0020, s_ft=0.6126,
                     alpha_f=0.0351, alpha_ft=0.0424, beta_f=0.1468, beta_ft=0.1219, rho=7.6885,
                     c_fft=1.7334, s_fft=2.0481),
    "news": dict(a_f=0.0011e7, a_ft=0.0022e7, b_f=97.8466, b_ft=54.8678, c_ft=0.0028, s_ft=1.9253,
                 alpha_f=0.0458, alpha_ft=0.0383, beta_f=0.1044, beta_ft=0.1161, rho=7.5996,
                 c_fft=1.0615, s_fft=3.1285),
}
RANKS = (8, 16, 32, 64, 128, 256)


def true_ft(k: dict, P, N):
    return laws.kalajdzievski_ft(P, N, k["c_ft"], k["s_ft"], k["a_ft"], k["alpha_ft"], k["b_ft"],
                                 k["beta_ft"], k["rho"])


def true_forget(k: dict, P, N):
    return laws.kalajdzievski_forget(P, N, k["c_fft"] * k["c_ft"], k["s_fft"] - k["c_fft"] * k["s_ft"],
                                     k["a_f"], k["alpha_f"], k["b_f"], k["beta_f"], k["rho"])


def sweep(dataset: str = "openorca", noise: float = 0.003, seed: int = 0, every: int = 5) -> pd.DataFrame:
    """A synthetic rank x step sweep from the paper's constants, with relative Gaussian noise."""
    k = CONSTANTS[dataset]
    rank, step = np.meshgrid(RANKS, np.arange(50, 261, every), indexing="ij")
    P, N = 2.5e6 * rank.ravel(), step.ravel().astype(float)
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "run_id": [f"r{r}" for r in rank.ravel()], "rank": rank.ravel(), "step": step.ravel(),
        "trainable_params": P, "ft_loss": true_ft(k, P, N) * (1 + noise * rng.standard_normal(P.size)),
        "forget_loss": true_forget(k, P, N) * (1 + noise * rng.standard_normal(P.size)),
    })


KAL_X = {"P": "trainable_params", "N": "step"}


@pytest.fixture(scope="module")
def chinchilla_df() -> pd.DataFrame:
    df = pd.read_csv(FIXTURES / "chinchilla_epoch_svg_extracted.csv")
    df = df.sort_values("loss").iloc[:-5]  # drop the 5 highest losses, as Epoch did
    return df.assign(N=df["Model Size"], D=df["Training FLOP"] / (6 * df["Model Size"]))


@pytest.fixture(scope="module")
def chinchilla_fit(chinchilla_df) -> FitResult:
    return fit(chinchilla_df, "chinchilla", y="loss", bootstrap=400, seed=1)


@pytest.fixture(scope="module")
def small_fit() -> FitResult:
    x = np.logspace(0, 3, 30)
    y = 1.0 + 2.0 * x**-0.5 * (1 + 0.01 * np.random.default_rng(0).standard_normal(30))
    return fit_arrays("power_law", {"x": x}, y, bootstrap=50)


# ---------------------------------------------------------------- real public data


def test_chinchilla_reproduces_epoch_optimum(chinchilla_fit):
    p = chinchilla_fit.params
    assert p["alpha"] == pytest.approx(0.348, abs=0.005)
    assert p["beta"] == pytest.approx(0.366, abs=0.01)
    assert p["E"] == pytest.approx(1.817, abs=0.01)
    assert chinchilla_fit.metrics["objective"] <= 0.0010183
    # the objective is the sum of Huber terms on natural-log residuals
    r = np.log(chinchilla_fit.fitted) - np.log(chinchilla_fit.y_obs)
    a = np.abs(r)
    huber = np.where(a <= 1e-3, 0.5 * r * r, 1e-3 * (a - 0.5e-3)).sum()
    assert huber == pytest.approx(chinchilla_fit.metrics["objective"], rel=1e-9)


def test_chinchilla_bootstrap_cis_close_to_epoch(chinchilla_fit):
    (alo, ahi), (blo, bhi) = chinchilla_fit.ci["alpha"], chinchilla_fit.ci["beta"]
    assert alo == pytest.approx(0.317, abs=0.015) and ahi == pytest.approx(0.373, abs=0.015)
    assert blo == pytest.approx(0.331, abs=0.015) and bhi == pytest.approx(0.415, abs=0.02)
    assert chinchilla_fit.draws.shape == (400, 5)


def test_chinchilla_reports_scale_exponent_tradeoff(chinchilla_fit):
    names = list(chinchilla_fit.params)
    corr = chinchilla_fit.correlation[names.index("A"), names.index("alpha")]
    assert corr > 0.99
    assert any("'A' and 'alpha' are correlated" in w for w in chinchilla_fit.warnings)
    assert "[[Warnings]]" in chinchilla_fit.report()


# ---------------------------------------------------------------- recovery


@pytest.mark.parametrize("dataset, loss", [("openorca", "huber_log"), ("news", "mse_log")])
def test_kalajdzievski_ft_recovers_predictions(dataset, loss):
    df = sweep(dataset, seed=3)
    res = fit(df, "kalajdzievski_ft", x=KAL_X, loss=loss, bootstrap=0, min_step=50)
    k = CONSTANTS[dataset]
    P, N = df["trainable_params"].to_numpy(), df["step"].to_numpy(float)
    np.testing.assert_allclose(res.predict(P=P, N=N), true_ft(k, P, N), rtol=0.01)
    # extrapolation to a rank and a step outside the data
    assert res.predict(P=2.5e6 * 512, N=300.0) == pytest.approx(true_ft(k, 2.5e6 * 512, 300.0), rel=0.01)


@pytest.mark.parametrize("dataset", ["openorca", "news"])
def test_kalajdzievski_forget_recovers_predictions(dataset):
    df = sweep(dataset, seed=4)
    res = fit(df, "kalajdzievski_forget", x=KAL_X, loss="mse", bootstrap=0)
    P, N = df["trainable_params"].to_numpy(), df["step"].to_numpy(float)
    np.testing.assert_allclose(res.predict(P=P, N=N), true_forget(CONSTANTS[dataset], P, N), rtol=0.01)


def test_weak_identifiability_is_reported_not_hidden():
    res = fit(sweep("openorca", seed=5), "kalajdzievski_ft", x=KAL_X, loss="mse", bootstrap=100)
    text = " ".join(res.warnings)
    assert "spans less than a decade" in text  # N runs 50..260
    assert "held at" in text  # b is fixed by the law's scale symmetry
    assert "correlated" in text or "not identified" in text
    assert res.draws.shape == (100, 7)


def test_inverse_linear_recovers_c_and_s():
    df = sweep("openorca", noise=0.002, seed=6)
    k = CONSTANTS["openorca"]
    ft_true = true_ft(k, df["trainable_params"], df["step"].astype(float))
    rng = np.random.default_rng(7)
    df["forget_loss"] = (k["s_fft"] - k["c_fft"] * ft_true) * (1 + 0.001 * rng.standard_normal(len(df)))
    for loss in ("mse", "huber_log"):
        res = fit(df, "inverse_linear", x={"L_ft": "ft_loss"}, loss=loss, bootstrap=0)
        assert res.params["c"] == pytest.approx(k["c_fft"], rel=0.05)
        assert res.params["s"] == pytest.approx(k["s_fft"], rel=0.05)


def test_joint_fit_reproduces_shared_rho():
    df = sweep("openorca", noise=0.0, every=10)
    res = fit(df, "kalajdzievski_joint", x=KAL_X, y=("ft_loss", "forget_loss"), loss="mse", bootstrap=0)
    assert res.params["rho"] == pytest.approx(CONSTANTS["openorca"]["rho"], rel=0.02)
    k = CONSTANTS["openorca"]
    P, N = 2.5e6 * 96, 200.0
    ft, fg = res.predict(P=P, N=N)
    assert ft == pytest.approx(true_ft(k, P, N), rel=1e-3)
    assert fg == pytest.approx(true_forget(k, P, N), rel=1e-3)


def test_power_law_recovers_parameters():
    x = np.logspace(0, 4, 60)
    y = 0.5 + 3.0 * x**-0.3 * (1 + 0.001 * np.random.default_rng(1).standard_normal(60))
    res = fit_arrays("power_law", {"x": x}, y, bootstrap=0)
    assert res.params["alpha"] == pytest.approx(0.3, rel=0.02)
    assert res.params["s"] == pytest.approx(0.5, rel=0.02)


@pytest.mark.slow
def test_bootstrap_prediction_intervals_are_calibrated():
    """Across 50 seeds, 95% bootstrap intervals at a held-out point cover the truth 85-99% of the time."""
    k = CONSTANTS["openorca"]
    P0, N0 = 2.5e6 * 96, 237.0  # a rank and a step absent from the sweep
    truth = true_ft(k, P0, N0)
    hits = []
    for seed in range(50):
        df = sweep("openorca", noise=0.003, seed=100 + seed, every=10).drop(columns="run_id")
        res = fit(df, "kalajdzievski_ft", x=KAL_X, loss="mse", bootstrap=100, n_refine=4, seed=seed)
        lo, hi = res.confidence_band(0.95, P=P0, N=N0)
        hits.append(lo <= truth <= hi)
    print(f"coverage of 95% bootstrap prediction intervals over {len(hits)} seeds: {np.mean(hits):.2f}")
    assert 0.85 <= np.mean(hits) <= 0.99, f"coverage {np.mean(hits):.2f}"


# ---------------------------------------------------------------- validation and metrics


def test_holdout_largest_rank_reports_extrapolation_error():
    res = fit(sweep(seed=8), "kalajdzievski_ft", x=KAL_X, holdout="rank:largest", loss="mse",
              bootstrap=30)
    h = res.metrics["holdout"]
    assert h["n"] == len(range(50, 261, 5)) and h["spec"] == "rank:largest"
    assert h["are"] < 0.01 and h["mae"] < 0.01 and np.isfinite(h["r2"])
    assert 0.0 <= h["coverage"] <= 1.0
    assert "[[Holdout]]" in res.report()


def test_holdout_last_steps():
    df = sweep(seed=9)
    res = fit(df, "kalajdzievski_ft", x=KAL_X, holdout="step:last:0.3", loss="mse", bootstrap=0)
    n_levels = df["step"].nunique()
    assert res.metrics["holdout"]["n"] == int(np.ceil(0.3 * n_levels)) * len(RANKS)
    assert res.metrics["n"] == len(df) - res.metrics["holdout"]["n"]


def test_in_sample_metrics(small_fit):
    m = small_fit.metrics
    assert m["r2"] > 0.99 and m["rmse"] > 0 and np.isfinite(m["aic"]) and np.isfinite(m["bic"])
    assert m["likelihood"] == "huber"
    assert set(m["rank_corr"]) == {"x"}
    assert small_fit.residuals.shape == (30,)


def test_rank_correlation_flags_systematic_misfit():
    x = np.logspace(0, 3, 50)
    y = 1.0 + 2.0 * x**-0.5 + 0.05 * np.log(x)  # a trend the law cannot follow
    res = fit_arrays("power_law", {"x": x}, y, loss="mse", bootstrap=0)
    assert abs(res.metrics["rank_corr"]["x"]) > 0.3 or res.metrics["r2"] < 0.999


def test_min_step_drops_early_rows():
    df = sweep(every=5)
    df = pd.concat([df, df.assign(step=10, ft_loss=5.0)], ignore_index=True)  # bogus early steps
    res = fit(df, "kalajdzievski_ft", x=KAL_X, loss="mse", bootstrap=0, min_step=50)
    assert res.metrics["n"] == len(df) // 2


def test_groups_are_resampled_whole():
    from forgetting_laws.analyse.engine import group_weights

    groups = np.repeat(["a", "b", "c"], [5, 3, 2])
    w = group_weights(groups, np.random.default_rng(0))
    for g in "abc":  # every row of a group carries the same weight
        assert np.unique(w[groups == g]).size == 1
    assert np.all(w == np.round(w)) and w.min() >= 0


def test_bootstrap_draws_do_not_depend_on_n_jobs():
    x = np.logspace(0, 2, 25)
    y = 1 + 2 * x**-0.5 * (1 + 0.01 * np.random.default_rng(2).standard_normal(25))
    one = fit_arrays("power_law", {"x": x}, y, bootstrap=8, seed=3)
    two = fit_arrays("power_law", {"x": x}, y, bootstrap=8, seed=3, n_jobs=2)
    np.testing.assert_allclose(one.draws, two.draws)


# ---------------------------------------------------------------- bad input


def test_unknown_law():
    with pytest.raises(LawError, match=r"law 'foo' is not registered; known laws: .*power_law"):
        fit(pd.DataFrame({"x": [1.0, 2.0]}), "foo")


def test_unknown_column_lists_available():
    df = sweep()
    with pytest.raises(FitDataError, match=r"column 'rankk' \(for x\) not in the data; available columns: run_id"):
        fit(df, "kalajdzievski_ft", x={"P": "rankk", "N": "step"})


def test_unknown_input_name():
    with pytest.raises(FitDataError, match=r"x names \['Q'\], which are not inputs of law 'power_law'"):
        fit(pd.DataFrame({"x": [1.0], "y": [1.0]}), "power_law", x={"Q": "x"})


def test_too_few_points():
    with pytest.raises(FitDataError, match=r"3 data points are too few for law 'power_law' with 3 parameters"):
        fit_arrays("power_law", {"x": [1.0, 2.0, 3.0]}, [1.0, 0.8, 0.7])


def test_nan_rows_dropped_with_count():
    x = np.logspace(0, 2, 20)
    y = 1 + x**-0.5
    y[[3, 7]] = [np.nan, np.inf]
    with pytest.warns(UserWarning, match=r"dropped 2 of 20 rows with NaN or inf"):
        res = fit_arrays("power_law", {"x": x}, y, bootstrap=0)
    assert res.metrics["n"] == 18 and "dropped 2 of 20" in res.warnings[0]


def test_nan_rows_dropped_from_frames():
    df = pd.DataFrame({"x": np.logspace(0, 2, 12), "y": 1 + np.logspace(0, 2, 12) ** -0.5})
    df.loc[0, "y"] = np.nan
    with pytest.warns(UserWarning, match=r"dropped 1 of 12 rows with NaN or inf in x, y"):
        fit(df, "power_law", bootstrap=0)


def test_non_positive_power_law_input():
    with pytest.raises(FitDataError, match=r"input 'x' of law 'power_law' must be > 0 .* got min -1"):
        fit_arrays("power_law", {"x": [-1.0, 1, 2, 3, 4]}, [1.0, 2, 3, 4, 5])


def test_log_loss_needs_positive_y():
    with pytest.raises(FitDataError, match=r"loss='huber_log' takes logs of y but y has values <= 0"):
        fit_arrays("power_law", {"x": [1.0, 2, 3, 4, 5]}, [1.0, 2, 0, 4, 5])


@pytest.mark.parametrize("kwargs, pattern", [
    ({"loss": "l1"}, r"loss='l1' is not supported; choose one of huber_log, mse, mse_log"),
    ({"delta": 0}, r"delta=0 must be > 0"),
    ({"bootstrap": -1}, r"bootstrap=-1 must be an integer >= 0"),
])
def test_bad_options(kwargs, pattern):
    with pytest.raises(FitDataError, match=pattern):
        fit_arrays("power_law", {"x": [1.0, 2, 3, 4, 5]}, [1.0, 2, 3, 4, 5], **kwargs)


@pytest.mark.parametrize("spec, pattern", [
    ("rank", r"holdout='rank' is not understood; use 'COL:largest'"),
    ("rankk:largest", r"holdout column 'rankk' not in the data"),
    ("step:last:1.5", r"fraction '1.5' must lie in \(0, 1\)"),
])
def test_bad_holdout(spec, pattern):
    with pytest.raises(FitDataError, match=pattern):
        fit(sweep(), "kalajdzievski_ft", x=KAL_X, holdout=spec, bootstrap=0)


def test_wrong_number_of_y_columns_for_joint_law():
    with pytest.raises(FitDataError, match=r"gives 1 column\(s\) but law 'kalajdzievski_joint' predicts 2"):
        fit(sweep(), "kalajdzievski_joint", x=KAL_X, y="ft_loss")


def test_predict_checks_inputs(small_fit):
    with pytest.raises(FitDataError, match=r"takes inputs \['x'\]; missing \['x'\], unexpected \['z'\]"):
        small_fit.predict(z=1.0)


# ---------------------------------------------------------------- user laws


def test_fit_a_user_function():
    def saturating(t, top, k):
        return top * (1 - np.exp(-k * t))

    law = laws.from_function(saturating, "saturating_test", inputs=["t"], linear=["top"],
                             bounds={"k": (0, None)}, grid={"k": [0.01, 0.1, 1.0]})
    t = np.linspace(0.1, 10, 40)
    res = fit_arrays(law, {"t": t}, 2.0 * (1 - np.exp(-0.7 * t)), loss="mse", bootstrap=0)
    assert res.params == pytest.approx({"top": 2.0, "k": 0.7}, rel=1e-5)


def test_fit_an_lmfit_model():
    import lmfit  # a hard dependency: never skipped

    def decay(t, amp, tau):
        return amp * np.exp(-t / tau)

    model = lmfit.Model(decay)
    model.set_param_hint("tau", value=2.0, min=0.01)
    model.set_param_hint("amp", value=1.0)
    t = np.linspace(0, 10, 30)
    res = fit_arrays(model, {"t": t}, 3.0 * np.exp(-t / 4.0), loss="mse", bootstrap=0)
    assert res.params["tau"] == pytest.approx(4.0, rel=1e-4)


# ---------------------------------------------------------------- the result object


def test_band_and_prediction_interval_bracket_prediction(small_fit):
    x = np.array([10.0, 100.0])
    mid = small_fit.predict(x=x)
    lo, hi = small_fit.confidence_band(0.9, x=x)
    plo, phi = small_fit.prediction_interval(0.9, x=x)
    assert lo.shape == plo.shape == (2,)
    assert np.all(plo <= lo) and np.all(lo <= mid) and np.all(mid <= hi) and np.all(hi <= phi)


def test_json_round_trip(small_fit, tmp_path):
    path = tmp_path / "fit.json"
    small_fit.to_json(path)
    back = FitResult.from_json(path)
    assert back.params == small_fit.params and back.ci == small_fit.ci
    np.testing.assert_allclose(back.draws, small_fit.draws)
    np.testing.assert_allclose(back.predict(x=5.0), small_fit.predict(x=5.0))
    assert json.loads(small_fit.to_json())["format_version"] == 2
    assert back.policy == small_fit.policy and back.noise == small_fit.noise
    assert back.interval_method == small_fit.interval_method
    np.testing.assert_allclose(back.prediction_interval(x=5.0), small_fit.prediction_interval(x=5.0))
    assert back.report() == small_fit.report()


def test_saved_version_1_still_loads():
    res = FitResult.from_json(FIXTURES / "fitresult_v1.json")
    assert res.law_name == "power_law" and res.format_version == 1
    assert res.params["alpha"] == pytest.approx(0.5, rel=0.05)
    assert res.predict(x=10.0) == pytest.approx(1.0 + 2.0 * 10**-0.5, rel=0.01)
    lo, hi = res.confidence_band(x=10.0)
    assert lo <= hi
    with pytest.raises(FitDataError, match=r"no prediction interval: saved in format 1"):
        res.prediction_interval(x=10.0)


def test_unknown_format_version_is_refused():
    text = (FIXTURES / "fitresult_v1.json").read_text().replace('"format_version": 1', '"format_version": 99')
    with pytest.raises(FitDataError, match=r"format_version=99 is not supported"):
        FitResult.from_json(text)


def test_to_lmfit(small_fit):
    pars = small_fit.to_lmfit()
    assert pars["alpha"].value == small_fit.params["alpha"]
    assert pars["alpha"].min == 0.0 and pars["alpha"].stderr == small_fit.stderr["alpha"]


def test_report_and_html(small_fit):
    text = small_fit.report()
    for section in ("[[Fit]]", "[[Variables]]", "[[Metrics]]", "alpha", "aic"):
        assert section in text
    assert small_fit._repr_html_().startswith("<div>") and "<table>" in small_fit._repr_html_()


def test_plot_returns_axes(small_fit):
    import matplotlib  # a hard dependency: never skipped
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = small_fit.plot()
    assert ax.get_xlabel() == "fitted"
    plt.close(ax.figure)


def test_start_is_reported(chinchilla_fit):
    s = chinchilla_fit.start
    assert s["n_starts"] == 4500 and 0 <= s["index"] < 4500 and s["converged"]


# ---------------------------------------------------------------- the fit command


def test_cli_fits_a_runs_folder(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    df = sweep(every=10)
    for run_id, part in df.groupby("run_id"):
        part.assign(schema_version=1).to_parquet(runs / f"{run_id}.parquet")  # as the sweep writes them
    out = tmp_path / "fits.json"
    assert main(["fit", str(runs), "--law", "kalajdzievski_ft", "--x", "P=trainable_params", "--x", "N=step",
                 "--y", "ft_loss", "--bootstrap", "0", "--loss", "mse", "--min-step", "50", "-o", str(out)]) == 0
    assert "[[Variables]]" in capsys.readouterr().out
    assert FitResult.from_json(out).law_name == "kalajdzievski_ft"


def test_cli_reports_bad_column(tmp_path, capsys):
    path = tmp_path / "one.parquet"
    sweep(every=10).to_parquet(path)
    assert main(["fit", str(path), "--law", "kalajdzievski_ft", "--x", "P=rankk", "--x", "N=step", "--bootstrap", "0"]) == 2
    assert "column 'rankk' (for x) not in the data" in capsys.readouterr().err


def test_cli_rejects_malformed_x(tmp_path, capsys):
    path = tmp_path / "one.parquet"
    sweep(every=10).to_parquet(path)
    assert main(["fit", str(path), "--law", "power_law", "--x", "P"]) == 2
    assert "--x 'P' is not INPUT=COLUMN" in capsys.readouterr().err


# ---------------------------------------------------------------- joint laws


def test_joint_law_reports_each_output():
    """Before: one R^2 pooled over the stacked outputs (0.9998 where they were 0.991 and 0.978)."""
    from forgetting_laws.analyse.diagnostics import error_metrics

    df = sweep("openorca", noise=0.003, every=10, seed=11)
    res = fit(df, "kalajdzievski_joint", x=KAL_X, y=("ft_loss", "forget_loss"), loss="mse", bootstrap=0)
    fitted, observed = np.split(res.fitted, 2), np.split(res.y_obs, 2)
    np.testing.assert_allclose(np.sort(observed[0]), np.sort(df["ft_loss"]))
    for k, col in enumerate(("ft_loss", "forget_loss")):
        expected = error_metrics(observed[k], fitted[k])
        assert res.metrics["outputs"][col] == pytest.approx(expected)
    assert res.metrics["r2"] == min(o["r2"] for o in res.metrics["outputs"].values())
    pooled = error_metrics(res.y_obs, res.fitted)["r2"]
    assert pooled > res.metrics["r2"]  # the pooled R^2 flatters: the outputs sit at different levels
    from forgetting_laws.analyse.fit_report import verdict
    text = verdict(res)
    assert "ft_loss: R² = " in text and "forget_loss: R² = " in text
    assert len(res.noise.sigma) == 2 and "ft_loss: R2, RMSE" in res.report()


def test_cli_checks_the_schema_of_a_single_run_file(tmp_path, capsys):
    """A run file given alone is checked like the files of a runs folder (before: it was fitted unchecked)."""
    path = tmp_path / "r1-abc.parquet"
    sweep(every=10).assign(schema_version=99).to_parquet(path)
    assert main(["fit", str(path), "--law", "kalajdzievski_ft", "--x", "P=trainable_params", "--x", "N=step",
                 "--bootstrap", "0", "-o", str(tmp_path / "fits.json")]) == 2
    err = capsys.readouterr().err
    assert "r1-abc.parquet" in err and "schema_version [99] is not supported" in err
    assert not (tmp_path / "fits.json").exists()
