"""The inverse-linear law against its alternatives, and held-out predictions against baselines."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from forgetting_laws import load_runs
from forgetting_laws.analyse.alternatives import holdout_baselines, inverse_linear_alternatives
from forgetting_laws.analyse.fit import fit
from forgetting_laws.errors import FitDataError

from conftest import REPO, make_synthetic_runs

PN = {"P": "trainable_params", "N": "step"}


@pytest.fixture(scope="module")
def demo():
    return load_runs(REPO / "examples" / "demo-runs")


def test_per_rank_slopes_and_f_tests_on_the_demo(demo):
    test = inverse_linear_alternatives(demo)
    slopes = list(test.per_run_slopes.values())
    assert list(test.per_run_slopes) == ["r = 1", "r = 4", "r = 16", "r = 64"]
    np.testing.assert_allclose(slopes, [0.913, 1.06, 1.18, 1.28], atol=0.005)  # slopes rise with the rank
    # the per-run lines against the pooled line, by an independent computation: np.polyfit per run
    rows = demo[demo.step >= 1]
    rss1 = sum(float(np.sum((g.forget_loss - np.polyval(np.polyfit(g.ft_loss, g.forget_loss, 1), g.ft_loss)) ** 2))
               for _, g in rows.groupby("run_id"))
    pooled = np.polyfit(rows.ft_loss, rows.forget_loss, 1)
    rss0 = float(np.sum((rows.forget_loss - np.polyval(pooled, rows.ft_loss)) ** 2))
    n = len(rows)
    f = (rss0 - rss1) / 6 / (rss1 / (n - 8))
    lines = next(a for a in test.alternatives if a.name == "per-run lines")
    assert lines.f == pytest.approx(f) and lines.p_value == pytest.approx(stats.f.sf(f, 6, n - 8))
    assert test.ols["c"] == pytest.approx(-pooled[0]) and test.huber["c"] != test.ols["c"]
    assert test.answer.startswith("at matched L_ft, L_f depends on P: yes (")
    assert "p = " in test.answer and "curvature: significant" in test.answer
    assert "pooled line (the law)" in test.report()


def test_no_evidence_when_the_law_holds():
    df = make_synthetic_runs(ranks=(4, 8, 16, 64, 128, 256))  # L_f = 3.1285 - 1.0615 L_ft exactly, plus noise
    test = inverse_linear_alternatives(df[df.step > 0])
    assert test.ols["c"] == pytest.approx(1.0615, rel=0.05)
    assert "depends on P: no evidence" in test.answer


def test_alternatives_need_runs(demo):
    with pytest.raises(FitDataError, match=r"needs >= 2 runs and more rows than 2 per run; got 1 runs"):
        inverse_linear_alternatives(demo[demo["rank"] == 4])


def test_held_out_predictions_stand_beside_baselines(demo):
    rank = fit(demo, "kalajdzievski_forget", x=PN, y="forget_loss", holdout="rank:largest", min_step=8)
    held = holdout_baselines(demo, rank)
    (base,) = held["baselines"]
    assert base["name"] == "line in log P through the 2 nearest ranks"
    assert held["are"] == pytest.approx(0.024, abs=0.002) and base["are"] == pytest.approx(0.0125, abs=0.0005)
    # relative to the rise of L_f since step 0, independently
    test = demo[(demo["rank"] == 64) & (demo.step >= 8)]
    rise = test.forget_loss.to_numpy() - demo[(demo["rank"] == 64) & (demo.step == 0)].forget_loss.iloc[0]
    pred = rank.predict(P=test.trainable_params.to_numpy(float), N=test.step.to_numpy(float))
    assert held["rise_are"] == pytest.approx(np.mean(np.abs(pred - test.forget_loss.to_numpy()) / rise))
    assert held["rise_are"] > 3 * held["are"]  # against the rise the error looks as large as it is
    steps = fit(demo, "kalajdzievski_forget", x=PN, y="forget_loss", holdout="step:last:0.3", min_step=8)
    assert holdout_baselines(demo, steps)["baselines"][0]["name"] == "per-run line in log N"
    from forgetting_laws.analyse.fit_report import verdict
    assert "line in log P through the 2 nearest ranks: 1.2" in verdict(rank)
