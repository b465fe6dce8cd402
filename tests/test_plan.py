"""Planning from a pilot: on synthetic runs from known laws, the recommendation is the true optimum
and the prediction intervals cover new measurements at their stated rate."""

import numpy as np
import pandas as pd
import pytest

from conftest import make_synthetic_runs
from forgetting_laws.analyse.laws import kalajdzievski_ft
from forgetting_laws.analyse.plan import PlanError, pareto_front, plan

NEWS = dict(c=0.0028, s=1.9253, a=0.0022e7, alpha=0.0383, b=54.8678, beta=0.1161, rho=7.5996)
RANKS, STEPS = [8, 16, 32, 64], [100, 200, 260, 400]


def truth(rank, steps):
    """The laws the synthetic pilot is drawn from (Kalajdzievski's News constants)."""
    ft = kalajdzievski_ft(P=2_500_000 * np.asarray(rank, float), N=np.asarray(steps, float), **NEWS)
    return ft, 3.1285 - 1.0615 * ft


@pytest.fixture(scope="module")
def pilot():
    return make_synthetic_runs(seed=1, noise=0.002, ranks=(8, 16, 32))


def test_the_recommendation_is_the_true_optimum(pilot):
    grid = pd.DataFrame([(r, n) for r in RANKS for n in STEPS], columns=["rank", "steps"])
    grid["ft"], grid["f"] = truth(grid["rank"], grid.steps)
    levels = np.sort(grid.ft.to_numpy())
    gaps = np.diff(levels)
    k = int(np.argmax(gaps[3:-3])) + 3  # a target well between two candidates, away from the ends
    target = float(levels[k] + gaps[k] / 2)
    best = grid[grid.ft <= target].sort_values("f").iloc[0]
    p = plan(pilot, ranks=RANKS, steps=STEPS, target_ft=target)
    assert (int(p.recommended["rank"]), int(p.recommended["steps"])) == (best["rank"], best.steps)
    assert p.recommended["ft_lo"] <= best.ft <= p.recommended["ft_hi"]
    assert "recommended for L_ft <=" in p.report()


def test_prediction_intervals_cover_new_measurements_at_their_rate():
    hits = []
    for seed in range(12):
        p = plan(make_synthetic_runs(seed=100 + seed, noise=0.002, ranks=(8, 16, 32)), ranks=RANKS, steps=STEPS)
        c = p.candidates
        ft, f = truth(c["rank"], c.steps)
        rng = np.random.default_rng(seed)
        new_ft = ft * (1 + 0.002 * rng.standard_normal(len(c)))  # a new run's measurement
        new_f = (3.1285 - 1.0615 * new_ft) * (1 + 0.002 * rng.standard_normal(len(c)))
        hits += list((c.ft_lo <= new_ft) & (new_ft <= c.ft_hi)) + list((c.forget_lo <= new_f) & (new_f <= c.forget_hi))
    assert 0.85 <= np.mean(hits) <= 0.99, np.mean(hits)


def test_a_target_out_of_reach_is_refused_with_the_closest_candidate(pilot):
    with pytest.raises(PlanError, match=r"target L_ft <= 1.5 is out of reach .* the lowest predicted L_ft that is "
                                        r"supported is \d\.\d+ \(rank 64, 400 steps\)"):
        plan(pilot, ranks=RANKS, steps=STEPS, target_ft=1.5)
    far = plan(pilot, ranks=[8, 1024], steps=[100, 10000])
    assert not far.candidates.set_index(["rank", "steps"]).loc[(1024, 10000), "supported"]
    with pytest.raises(PlanError, match="out of reach"):
        plan(pilot, ranks=[1024], steps=[10000], target_ft=2.5)  # reachable, but only far beyond the pilot


def test_budgets_and_ceilings_bound_the_recommendation(pilot):
    p = plan(pilot, ranks=RANKS, steps=STEPS, max_steps=200, max_forgetting=0.63)
    r = p.recommended
    assert r.steps <= 200 and r.forget_hi - p.base["forget_loss"] <= 0.63
    within = p.candidates[(p.candidates.steps <= 200) & (p.candidates.forget_hi - p.base["forget_loss"] <= 0.63)]
    assert r.gain == within.gain.max()


def test_pareto_front_keeps_only_undominated_points():
    t = pd.DataFrame({"gain": [1, 2, 2, 3, 0.5], "forgetting": [1, 1.5, 2, 3, 2]})
    assert sorted(pareto_front(t).index) == [0, 1, 3]


def test_a_pilot_of_several_methods_is_refused(pilot):
    mixed = pilot.copy()
    mixed.loc[mixed["rank"] == 8, "method"] = "sam"
    with pytest.raises(PlanError, match="one method and one model"):
        plan(mixed)


def test_the_plan_figure_draws_both_panels(pilot):
    import matplotlib

    matplotlib.use("Agg")
    axes = plan(pilot, ranks=RANKS, steps=STEPS, target_ft=2.03).plot()
    assert len(axes) == 2 and axes[0].get_legend() is not None


def test_plan_then_verify_on_the_tiny_model_records_the_check(tiny_spec_file, tmp_path, capsys):
    import json

    from forgetting_laws.cli import main
    from forgetting_laws.measure.verify import verification_history

    spec = tiny_spec_file(max_steps=12, ranks=(1, 2, 4))
    runs = tmp_path / "pilot"
    assert main(["sweep", str(spec), "--out", str(runs), "--quiet"]) == 0
    assert main(["plan", str(runs), "--ranks", "2", "4", "8", "--steps", "12", "24", "--max-steps", "24",
                 "--verify", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "recommended for steps <= 24" in out and "verify forget: predicted" in out
    assert (runs / "_plans" / "candidates.csv").exists() and (runs / "_plans" / "plan.png").exists()
    (record,) = [json.loads(line) for line in (runs / "_plans" / "verifications.jsonl").read_text().splitlines()]
    assert record["steps"] <= 24 and set(record["ft"]) >= {"predicted", "lo", "hi", "measured", "covered"}
    assert len(verification_history(runs)) == 1
    verified = [p for p in (runs / "_verify").glob("*.parquet")]
    assert len(verified) == 1 and f"r{record['rank']}-" in verified[0].name


def test_a_pilot_whose_fit_has_no_prediction_interval_is_refused_with_the_fix(pilot, monkeypatch):
    """On the embedded default's pilot, fitted from step 1, the rows of a run correlate at +0.74 and count as
    6.6 observations: no noise model beside 6 parameters. The plan says how to get one."""
    from forgetting_laws.analyse.result import FitResult
    from forgetting_laws.errors import FitDataError

    def none(self, *a, **k):
        raise FitDataError("this fit has no prediction interval: too few independent observations")

    monkeypatch.setattr(FitResult, "prediction_interval", none)
    with pytest.raises(PlanError, match=r"no prediction interval .*--min-step 8"):
        plan(pilot, ranks=RANKS, steps=STEPS)


def test_the_measured_region_is_the_rows_the_laws_were_fitted_to(pilot):
    first = int(pilot.step[pilot.step >= 1].min())
    assert plan(pilot, ranks=RANKS, steps=STEPS).measured["N"][0] == first
    from forgetting_laws.analyse.policy import DEFAULT_POLICY

    assert plan(pilot, ranks=RANKS, steps=STEPS, policy=DEFAULT_POLICY.updated(min_step=2 * first)).measured["N"][0] >= 2 * first
