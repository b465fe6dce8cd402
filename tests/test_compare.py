"""Method comparison: matched-loss interpolation and paired differences on hand-made runs, tiny sweeps end to end."""

import numpy as np
import pandas as pd
import pytest

from forgetting_laws import load_runs
from forgetting_laws.cli import main
from forgetting_laws.analyse.arms import arm_labels
from forgetting_laws.analyse.compare import compare, forget_at, matched_levels
from forgetting_laws.analyse.paired import paired, t_interval
from forgetting_laws.measure.spec import SweepSpec
from forgetting_laws.errors import FitDataError
from forgetting_laws.measure.sweep import run_sweep
from forgetting_laws.store import to_frame

METHODS = ["lora", "sam", "ilora", "replay"]


def test_forget_at_interpolates_the_first_crossing():
    run = pd.DataFrame({"step": [0, 1, 2, 3], "ft_loss": [3.0, 2.0, 2.5, 1.0], "forget_loss": [1.0, 2.0, 0.0, 4.0]})
    got = forget_at(run, [2.5, 2.0, 1.5, 0.5, 3.5])
    np.testing.assert_allclose(got[:3], [1.5, 2.0, 0.0 + (2.5 - 1.5) / (2.5 - 1.0) * 4.0])  # 1.5: between steps 2 and 3
    assert np.isnan(got[3]) and np.isnan(got[4])  # never reached / starts below


def synthetic(methods=("lora", "sam"), runs=3, slope=(1.0, 0.5), seed=0):
    """Runs whose L_f = 1 + slope * (3 - L_ft) (all start at L_f = 1), ft_loss from 3.0 down to about 2."""
    rng = np.random.default_rng(seed)
    rows = []
    for m, c in zip(methods, slope):
        for r in range(runs):
            ft = np.linspace(3.0, 2.0 - 0.1 * r, 6)
            for step, l in enumerate(ft):
                rows.append({"run_id": f"{m}{r}", "method": m, "step": step, "ft_loss": l,
                             "forget_loss": 1 + c * (3 - l) + 1e-4 * rng.standard_normal(),
                             "tokens_seen": step * 64, "wall_s": step * (2.0 if m == "sam" else 1.0)})
    return pd.DataFrame(rows)


def test_compare_recovers_known_slopes_and_orders_methods():
    df = synthetic()
    cmp = compare(df, n_levels=5, bootstrap=100)
    laws = cmp.laws.set_index("method")
    assert laws.loc["lora", "c"] == pytest.approx(1.0, rel=1e-2) and laws.loc["sam", "c"] == pytest.approx(0.5, rel=1e-2)
    assert (laws.c_lo <= laws.c).all() and (laws.c <= laws.c_hi).all()
    m = cmp.matched.pivot(index="ft_loss", columns="method", values="forget_loss")
    assert len(m) == 5 and (m["sam"] < m["lora"]).all()  # sam forgets less at every matched level
    np.testing.assert_allclose(m["lora"], 4 - m.index, atol=1e-3)
    comp = cmp.compute.set_index("method")
    assert comp.loc["sam", "wall_s_per_step"] == pytest.approx(2 * comp.loc["lora", "wall_s_per_step"])
    assert comp.loc["lora", "tokens"] == 3 * 5 * 64
    assert "inverse-linear law" in cmp.report()


def test_matched_levels_need_a_common_range():
    df = synthetic()
    assert matched_levels(df, 4).min() == pytest.approx(2.0) and matched_levels(df, 4).max() < 3.0
    df.loc[df.run_id == "lora0", "ft_loss"] += 5
    with pytest.raises(FitDataError, match="no ft_loss level is reached by every run"):
        matched_levels(df)


@pytest.fixture(scope="module")
def method_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("methods")
    raw = {"sweep": {"name": "methods"}, "model": {"name": "tiny-random-llama"},
           "data": {"seq_len": 32, "heldout_blocks": 4, "reference_blocks": 4},
           "train": {"max_steps": 8, "batch_size": 2, "lr": 1e-2}, "probe": {"every": 2},
           "method": {"rho": 0.05, "ema": 0.5, "buffer_size": 8, "replay_ratio": 0.5},
           "grid": {"method.name": METHODS, "lora.rank": [1, 4]}}
    outcomes = run_sweep(SweepSpec.from_dict(raw), out, progress=False)
    assert [o["status"] for o in outcomes] == ["complete"] * 8
    return out


def test_tiny_method_sweep_runs_to_parquet(method_sweep):
    df = load_runs(method_sweep)
    assert sorted(df.method.unique()) == sorted(METHODS)
    assert df.groupby("method").run_id.nunique().to_dict() == {m: 2 for m in METHODS}
    sam, ilora, lora = (df[df.method == m] for m in ("sam", "ilora", "lora"))
    assert (sam.sam_rho == 0.05).all() and sam.ilora_ema.isna().all()
    assert (ilora.ilora_ema == 0.5).all() and (ilora.ilora_eval_adapter == "slow").all() and ilora.sam_rho.isna().all()
    assert lora[["sam_rho", "ilora_ema", "replay_ratio"]].isna().all().all()
    first = df[df.step == 0]
    assert first.forget_loss.nunique() == 1  # every method starts from the base model
    assert (df[df.step == 8].ft_loss.values < first.ft_loss.values).all()


def test_compare_on_the_tiny_sweep(method_sweep, tmp_path, capsys):
    cmp = compare(load_runs(method_sweep), n_levels=4, bootstrap=50)
    assert sorted(cmp.laws.method) == sorted(METHODS)
    assert set(cmp.matched.method) == set(METHODS) and cmp.matched.forget_loss.notna().all()
    assert (cmp.compute.tokens > 0).all()
    assert main(["compare", str(method_sweep), "--out", str(tmp_path), "--bootstrap", "20", "--levels", "3"]) == 0
    assert "forgetting at matched fine-tuning loss" in capsys.readouterr().out
    assert (tmp_path / "compare_methods.png").exists() and (tmp_path / "compare_laws.csv").exists()


# ------------------------------------------------------------------------- paired against plain LoRA


def paired_runs(rng, delta=0.05, seeds=3, ranks=(1, 4), sd_seed=0.1, sd_run=0.02, arms=(("sam", None),)):
    """Runs of lora and of each arm at every (rank, seed): L_f = 1 + (3 - L_ft) + u_seed + e_run (+ delta).

    The seed effect u is shared by a pair, so the paired difference is delta + e_arm - e_lora.
    """
    rows = []
    for s in range(seeds):
        u = rng.normal(0, sd_seed)
        for r in ranks:
            for method, rho in (("lora", None), *arms):
                e, shift = rng.normal(0, sd_run), 0.0 if method == "lora" else delta
                for step, ft in enumerate(np.linspace(3.0, 2.0 - 0.05 * r - 0.02 * s, 6)):
                    lf = 1 + (3 - ft) + u + e + shift
                    rows.append({"run_id": f"{method}{rho}-r{r}-s{s}", "sweep": "syn", "method": method, "model": "m",
                                 "dataset": "d", "reference": "ref", "seed": s, "rank": r, "step": step,
                                 "tokens_seen": step * 64, "trainable_params": 100 * r, "lr": 1e-3, "lora_alpha": 1.0,
                                 "ft_loss": ft, "ft_train_loss": ft, "forget_loss": lf, "forget_kl": np.nan,
                                 "ref_loss": 3.0 - 0.1 * step + shift / 2, "agreement": 0.9 - lf / 10,
                                 "wall_s": float(step), "schema_version": 1, "sam_rho": rho})
    return to_frame(rows)


def test_t_interval_matches_the_formula():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0], 0.95)
    assert mean == 2.0 and hi - mean == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-6)  # t(2, 0.975)
    assert np.isnan(t_interval([1.0])[1])


def test_paired_intervals_cover_a_known_difference_at_the_stated_rate():
    """Synthetic sweeps with a true paired difference of 0.05: the 95% t interval over 3 seeds covers it
    in about 95% of them (binomial sd over 300 sweeps: 1.3 points; the bounds are 3 sd)."""
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(300):
        row = paired(paired_runs(rng), n_levels=1).table.iloc[0]
        assert row.n_seeds == 3 and row.interval == "t"
        covered.append(row.d_forget_loss_lo <= 0.05 <= row.d_forget_loss_hi)
    assert 0.91 <= np.mean(covered) <= 0.99


def test_paired_differences_remove_the_seed_effect_and_say_what_the_interval_is():
    rng = np.random.default_rng(1)
    res = paired(paired_runs(rng, delta=-0.2, seeds=4, sd_seed=1.0), n_levels=3)
    head = res.headline().iloc[0]
    assert head.arm == "sam" and head.n_seeds == 4 and head.n_pairs == 8  # 2 ranks x 4 seeds
    assert head.d_forget_loss == pytest.approx(-0.2, abs=0.05)  # a seed effect of sd 1 does not blur it
    assert head.d_forget_loss_hi < 0 and head.verdict.startswith("forgets less")
    assert head.d_ref_loss == pytest.approx(-0.1, abs=1e-9)
    assert len(res.table) == 3 and (res.table.depth.tolist() == [0, 1, 2])
    assert "Student t interval over seeds of the seed-level paired differences" in res.report()
    assert head.ft_loss == pytest.approx(res.pairs.groupby("run_id").ft_loss.min().max())


def test_two_seeds_are_underpowered_and_show_ranges():
    res = paired(paired_runs(np.random.default_rng(2), seeds=2), n_levels=2)
    assert (res.table.interval == "range").all() and (res.table.n_seeds == 2).all()
    per_seed = res.pairs[res.pairs.depth == 0].groupby("seed").d_forget_loss.mean()
    head = res.headline().iloc[0]
    assert (head.d_forget_loss_lo, head.d_forget_loss_hi) == (per_seed.min(), per_seed.max())
    assert "underpowered (2 seeds < 3)" in head.verdict and "underpowered: sam" in res.report()


def test_each_setting_of_a_method_is_an_arm_of_its_own():
    df = paired_runs(np.random.default_rng(3), arms=(("sam", 0.05), ("sam", 0.5)))
    assert sorted(arm_labels(df).unique()) == ["lora", "sam (rho=0.05)", "sam (rho=0.5)"]
    assert sorted(paired(df, n_levels=1).table.arm) == ["sam (rho=0.05)", "sam (rho=0.5)"]
    assert sorted(compare(df, n_levels=2, bootstrap=10).laws.method) == ["lora", "sam (rho=0.05)", "sam (rho=0.5)"]


def test_paired_needs_plain_lora_partners():
    df = paired_runs(np.random.default_rng(4))
    with pytest.raises(FitDataError, match=r"no 'lora' runs to pair with: add 'lora' to the sweep's method.name"):
        paired(df[df.method != "lora"])
    twin = df[df.run_id == "loraNone-r1-s0"].assign(run_id="twin")
    with pytest.raises(FitDataError, match=r"two lora runs share model, dataset, reference, lr, lora_alpha, rank, seed"):
        paired(pd.concat([df, twin]))
    lonely = df[~((df.method == "lora") & (df.seed == 2))]
    res = paired(lonely, n_levels=1)
    assert res.table.n_seeds.tolist() == [2] and "2 run(s) without a lora partner left out" in res.report()


def test_compare_on_a_seeded_tiny_sweep_is_underpowered_with_2_seeds_and_paired_with_3(tmp_path, capsys):
    raw = {"sweep": {"name": "seeded", "seeds": 2}, "model": {"name": "tiny-random-llama"},
           "data": {"seq_len": 32, "heldout_blocks": 4, "reference_blocks": 4},
           "train": {"max_steps": 6, "batch_size": 2, "lr": 1e-2}, "probe": {"every": 2},
           "method": {"rho": 0.05}, "grid": {"method.name": ["lora", ["sam", "replay"]], "lora.rank": [1, 2]}}
    runs, out = tmp_path / "runs", tmp_path / "out"
    assert len(run_sweep(SweepSpec.from_dict(raw), runs, progress=False)) == 8
    assert main(["compare", str(runs), "--bootstrap", "10", "--levels", "3", "--paired-levels", "2"]) == 0
    text = capsys.readouterr().out
    assert "sam+replay" in text and "underpowered (2 seeds < 3)" in text
    raw["sweep"]["seeds"] = 3  # the same sweep with a third seed: only its 4 runs are new
    assert len(run_sweep(SweepSpec.from_dict(raw), runs, progress=False)) == 4
    assert main(["compare", str(runs), "--out", str(out), "--bootstrap", "10", "--levels", "3",
                 "--paired-levels", "2"]) == 0
    text = capsys.readouterr().out
    assert "underpowered" not in text and "95% Student t interval over seeds" in text
    table = pd.read_csv(out / "compare_paired.csv")
    assert set(table.arm) == {"sam+replay"} and (table.n_seeds == 3).all() and (table.n_pairs == 6).all()
    assert (table.interval == "t").all() and table[["d_forget_loss", "d_ref_loss", "d_agreement"]].notna().all().all()
    assert (out / "compare_paired.png").exists() and (out / "compare_pairs.csv").exists()
    df = load_runs(runs)
    assert sorted(df.seed.unique()) == [0, 1, 2] and df.run_id.nunique() == 12
    assert (df[df.method == "sam+replay"].sam_rho == 0.05).all()
