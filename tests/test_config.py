import pytest

from forgetting_laws.measure.spec import ConfigError, SweepSpec, load_spec

from forgetting_laws.measure.config import ProbeSection
from conftest import REPO


def spec(**sections):
    return SweepSpec.from_dict({"sweep": {"name": "t"}, **sections})


def test_grid_expands_cartesian_product_in_order():
    s = spec(grid={"lora.rank": [1, 8], "train.lr": [1e-3, 1e-4]})
    runs = s.expand()
    assert [(r.lora.rank, r.train.lr) for r in runs] == [(1, 1e-3), (1, 1e-4), (8, 1e-3), (8, 1e-4)]
    assert len({r.run_id for r in runs}) == 4


def test_run_id_is_stable_and_ignores_device():
    a = spec(grid={"lora.rank": [4]}).expand()[0]
    b = spec(model={"device": "cpu"}, grid={"lora.rank": [4]}).expand()[0]
    assert a.run_id == b.run_id
    assert a.run_id != spec(train={"seed": 1}).expand()[0].run_id


def test_int_is_accepted_for_float_field():
    assert spec(train={"lr": 1}).base.train.lr == 1.0


@pytest.mark.parametrize("raw, match", [
    ({"bogus": {}}, r"unknown section \[bogus\]; sections: sweep, model"),
    ({"train": {"max_stepz": 3}}, r"unknown field train.max_stepz; fields of \[train\]: max_steps"),
    ({"lora": {"rank": 0}}, r"lora.rank = 0, must be > 0"),
    ({"train": {"max_steps": -1}}, r"train.max_steps = -1, must be > 0"),
    ({"grid": {"lora.rnk": [1]}}, r"grid key 'lora.rnk' names no field; valid keys: .*lora.rank"),
    ({"grid": {"lora.rank": [4, 0]}}, r"lora.rank = 0, must be > 0"),
    ({"grid": {"lora.rank": 4}}, r"must be a non-empty list"),
    ({"train": {"optimizer": "adam"}}, r"train.optimizer = 'adam'; allowed values: 'adamw', 'adafactor', 'sgd'"),
    ({"train": {"max_steps": "ten"}}, r"train.max_steps = 'ten' has type str, expected int"),
    ({"probe": {"steps": "linear"}}, r"probe.steps = 'linear', use 'log' or a list"),
    ({"probe": {"lm_eval": {"tasks": []}}}, r"probe.lm_eval.tasks = \[\], give a non-empty list of task names"),
    ({"probe": {"lm_eval": {"tasks": ["a"], "limit": -1}}}, r"probe.lm_eval.limit = -1, must be >= 0"),
    ({"probe": {"lm_eval": {"tasks": ["a"], "steps": "log"}}}, r"probe.lm_eval.steps = 'log', use 'all' or a list"),
    ({"probe": {"lm_eval": {"task": ["a"]}}}, r"unknown field probe.lm_eval.task; fields of \[probe.lm_eval\]: tasks"),
    ({"probe": {"lm_eval": ["a"]}}, r"probe.lm_eval = \['a'\]; write it as a table: \[probe.lm_eval\]"),
    ({"probe": {"refusal": {"max_new_tokens": 0}}}, r"probe.refusal.max_new_tokens = 0, must be > 0"),
])
def test_bad_specs_name_field_value_and_fix(raw, match):
    with pytest.raises(ConfigError, match=match):
        SweepSpec.from_dict(raw)


def test_probe_schedule_log_then_every():
    assert ProbeSection(steps="log", every=10).schedule(60) == [0, 1, 2, 4, 8, 10, 20, 30, 40, 50, 60]
    assert ProbeSection(steps=[5, 0, 99], every=10).schedule(60) == [0, 5, 60]


def test_load_spec_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep\nname=1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_spec(bad)


def test_demo_spec_meets_its_brief():
    from conftest import REPO

    s = load_spec(REPO / "forgetting_laws" / "specs" / "demo.toml")
    runs = s.expand()
    ranks = sorted(r.lora.rank for r in runs)
    assert len(ranks) >= 4 and ranks[-1] / ranks[0] >= 10 ** 1.5
    assert all(r.train.max_steps >= 60 for r in runs)
    assert s.base.model.name == "smollm2-135m" and s.base.data.dataset == "lee-news"


def test_run_ids_of_recorded_sweeps_are_unchanged():
    # New spec fields must not change the ids of runs already on disk (run_id=False / "if-set").
    # The demo's runs are its whole grid; the committed mitigation runs are the part of the study's
    # grid that was run (rank 1; lora, replay, distill, ilora at lambda 0.9; 3 seeds), and the
    # pilot's are its whole grid.
    for name, folder, whole in [("demo", "demo-runs", True), ("mitigation", "mitigation-runs", False),
                                ("pilot", "pilot-runs", True)]:
        recorded = {p.stem for p in (REPO / "examples" / folder).glob("*.parquet")}
        assert recorded, folder
        ids = {r.run_id for r in load_spec(REPO / "forgetting_laws" / "specs" / f"{name}.toml").expand()}
        assert (ids == recorded) if whole else (recorded <= ids), name


def test_lm_eval_sub_tables_enter_the_run_id_only_when_set():
    plain = spec().expand()[0]
    a = spec(probe={"lm_eval": {"tasks": ["fl_arc_mini"]}}).expand()[0]
    b = spec(probe={"lm_eval": {"tasks": ["fl_arc_mini"], "batch_size": 2}}).expand()[0]
    c = spec(probe={"lm_eval": {"tasks": ["fl_arc_mini"], "limit": 10}}).expand()[0]
    assert plain.probe.lm_eval is None and "lm_eval" not in plain.to_dict()["probe"]
    assert len({plain.run_id, a.run_id, c.run_id}) == 3 and a.run_id == b.run_id  # batch size: how, not what
    again = SweepSpec.from_dict({**a.to_dict(), "grid": {}}).expand()[0]
    assert again.probe == a.probe and again.run_id == a.run_id


def test_sub_probe_steps_join_the_schedule():
    p = spec(train={"max_steps": 20}, probe={"steps": [5], "lm_eval": {"tasks": ["t"], "steps": [3]},
                                              "refusal": {}}).base.probe
    assert p.schedule(20) == [0, 3, 5, 20]
    assert p.sub_schedule("lm_eval", 20) == [0, 3, 20]
    assert p.sub_schedule("refusal", 20) == [0, 5, 20]  # 'all': the main schedule
    assert spec().base.probe.sub_schedule("refusal", 20) == []


def test_downstream_spec_probes_offline_tasks():
    s = load_spec(REPO / "forgetting_laws" / "specs" / "downstream.toml")
    p = s.base.probe
    assert s.base.model.name == "smollm2-135m" and len(s.expand()) == 2
    assert p.lm_eval.tasks == ["fl_arc_mini"] and p.refusal.prompts == "builtin"
    assert p.sub_schedule("lm_eval", s.base.train.max_steps) == [0, 10, 20, 30]


def test_auto_dtype_resolves_before_the_run_id(tmp_path, monkeypatch):
    from forgetting_laws.measure import precision

    plain = tmp_path / "cpuinfo"
    plain.write_text("model name : AMD EPYC\nflags : fpu avx avx2 fma\n")
    amx = tmp_path / "cpuinfo-amx"
    amx.write_text("model name : Intel Xeon\nflags : fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert precision.cpu_bf16_flags(plain) == [] and precision.cpu_bf16_flags(amx) == ["amx_bf16", "avx512_bf16"]
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda *a: [])
    monkeypatch.setattr(precision, "bf16_check", lambda: pytest.fail("no check without the instructions"))
    runs = {r.model.dtype: r.run_id for r in (spec(model={"device": "cpu"}).expand()[0],
                                              spec(model={"device": "cpu", "dtype": "float32"}).expand()[0],
                                              spec(model={"device": "cpu", "dtype": "bfloat16"}).expand()[0])}
    assert set(runs) == {"float32", "bfloat16"} and runs["float32"] != runs["bfloat16"]
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda *a: ["amx_bf16"])
    monkeypatch.setattr(precision, "bf16_check", lambda: {"speedup": 2.0})
    assert spec(model={"device": "cpu"}).expand()[0].model.dtype == "bfloat16"
    monkeypatch.setattr(precision, "bf16_check", lambda: {"speedup": 0.9})  # instructions, but not faster
    assert spec(model={"device": "cpu"}).expand()[0].model.dtype == "float32"
    assert spec(sweep={"name": "t", "num_gpus": 1}).expand()[0].model.dtype == "bfloat16"


def test_sweep_seeds_add_the_seed_axis_as_a_shorthand_for_the_grid():
    runs = spec(sweep={"name": "t", "seeds": 3}, train={"seed": 5}, grid={"lora.rank": [1, 8]}).expand()
    assert [(r.lora.rank, r.train.seed) for r in runs] == [(1, 5), (1, 6), (1, 7), (8, 5), (8, 6), (8, 7)]
    explicit = spec(train={"seed": 5}, grid={"lora.rank": [1, 8], "train.seed": [5, 6, 7]}).expand()
    assert [r.run_id for r in runs] == [r.run_id for r in explicit]  # the same runs, the same ids
    assert {r.sweep.seeds for r in runs} == {1}  # a resolved run has no axes left
    assert SweepSpec.from_dict(runs[4].to_dict()).expand()[0].run_id == runs[4].run_id
    assert len(spec(sweep={"name": "t", "seeds": 1}).expand()) == 1


@pytest.mark.parametrize("raw, match", [
    ({"sweep": {"seeds": 0}}, r"sweep.seeds = 0, must be > 0"),
    ({"sweep": {"seeds": 2.5}}, r"sweep.seeds = 2.5 has type float, expected int"),
    ({"sweep": {"seeds": True}}, r"sweep.seeds = True has type bool, expected int"),
    ({"sweep": {"seeds": 3}, "grid": {"train.seed": [0, 1]}}, r"sweep.seeds = 3 and grid 'train.seed' both set the "
                                                              r"seeds; keep one"),
])
def test_bad_seeds_name_the_field(raw, match):
    with pytest.raises(ConfigError, match=match):
        SweepSpec.from_dict(raw)
