"""Method comparison: matched-loss interpolation on hand-made runs, and a tiny 4-method sweep end to end."""

import numpy as np
import pandas as pd
import pytest

from forgetting_laws import load_runs
from forgetting_laws.cli import main
from forgetting_laws.analyse.compare import compare, forget_at, matched_levels
from forgetting_laws.measure.spec import SweepSpec
from forgetting_laws.errors import FitDataError
from forgetting_laws.measure.sweep import run_sweep

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
