"""The whole pipeline on a tiny random model: spec -> runs -> parquet -> load_runs."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from forgetting_laws import load_runs
from forgetting_laws.cli import main
from forgetting_laws.measure.spec import load_spec
from forgetting_laws.store import SCHEMA, SCHEMA_VERSION, RunLocked, SchemaError, run_lock
from forgetting_laws.measure.sweep import run_sweep

VALUE_COLS = ["ft_loss", "ft_train_loss", "forget_loss", "ref_loss", "agreement"]


def test_pipeline_writes_schema_rows(tiny_spec_file, tmp_path):
    spec = load_spec(tiny_spec_file(max_steps=12, ranks=(1, 4)))
    out = tmp_path / "runs"
    outcomes = run_sweep(spec, out, progress=False)
    assert [o["status"] for o in outcomes] == ["complete", "complete"]
    df = load_runs(out)
    assert list(df.columns)[: len(SCHEMA)] == list(SCHEMA)
    assert (df.schema_version == SCHEMA_VERSION).all()
    for col, dtype in SCHEMA.items():
        assert str(df[col].dtype) == dtype, col
    schedule = [0, 1, 2, 4, 8, 12]
    for rank, run in df.groupby("rank"):
        assert run.step.tolist() == schedule
        assert run.tokens_seen.tolist() == [s * 2 * 32 for s in schedule]
        assert run.forget_loss.notna().all() and run.ft_loss.notna().all()
        assert np.isnan(run.ft_train_loss.iloc[0]) and run.ft_train_loss.iloc[1:].notna().all()
        assert run.agreement.iloc[0] == 1.0
        assert run.forget_kl.isna().all()  # not asked for
    p = df.groupby("rank").trainable_params.first()
    # LoRA on both linear layers kinds of the tiny Llama: P is linear in the rank
    assert p[4] == 4 * p[1] and p[1] > 0
    # the step-0 probe is the base model's, the same for every rank
    first = df[df.step == 0]
    assert first.forget_loss.nunique() == 1 and first.ft_loss.nunique() == 1
    # fine-tuning on the news corpus lowers ft_loss and raises forgetting
    last = df[df.step == 12]
    assert (last.ft_loss.values < first.ft_loss.values).all()
    assert (last.forget_loss.values > first.forget_loss.values).all()
    meta = json.loads((out / "_meta" / f"{df.run_id.iloc[0]}.json").read_text())
    assert meta["status"] == "complete" and meta["spec"]["lora"]["rank"] in (1, 4)


def test_rerun_skips_complete_runs(tiny_spec_file, tmp_path):
    spec = load_spec(tiny_spec_file(max_steps=4, ranks=(1,)))
    run_sweep(spec, tmp_path, progress=False)
    before = (tmp_path / f"{spec.expand()[0].run_id}.parquet").stat().st_mtime_ns
    assert run_sweep(spec, tmp_path, progress=False) == []
    assert (tmp_path / f"{spec.expand()[0].run_id}.parquet").stat().st_mtime_ns == before


def test_forget_kl_when_asked(tiny_spec_file, tmp_path):
    spec = load_spec(tiny_spec_file(max_steps=4, ranks=(2,)).with_name("tiny.toml"))
    raw = spec.to_dict()
    raw["probe"]["forget_kl"] = True
    from forgetting_laws.measure.spec import SweepSpec

    run_sweep(SweepSpec.from_dict(raw), tmp_path, progress=False)
    df = load_runs(tmp_path)
    assert df.forget_kl.iloc[0] == pytest.approx(0.0, abs=1e-6)
    assert (df.forget_kl.iloc[1:] > 0).all()


def test_diverged_run_is_marked_and_sweep_goes_on(tiny_spec_file, tmp_path):
    path = tiny_spec_file(max_steps=8, ranks=(1, 2))
    text = path.read_text().replace("lr = 1e-2", "lr = 1e-2\nmax_grad_norm = 0.0").replace(
        '"lora.rank" = [1, 2]', '"lora.rank" = [1, 2]\n"train.lr" = [1e30, 1e-2]')
    path.write_text(text)
    spec = load_spec(path)
    outcomes = run_sweep(spec, tmp_path, progress=False)
    status = {o["run_id"]: o["status"] for o in outcomes}
    diverged = [r for r in spec.expand() if r.train.lr == 1e30]
    assert all(status[r.run_id] == "diverged" for r in diverged)
    assert all(status[r.run_id] == "complete" for r in spec.expand() if r.train.lr == 1e-2)
    for r in diverged:
        meta = json.loads((tmp_path / "_meta" / f"{r.run_id}.json").read_text())
        assert meta["status"] == "diverged"
        rows = pd.read_parquet(tmp_path / f"{r.run_id}.parquet")
        assert rows.step.iloc[0] == 0 and len(rows) >= 2
    assert run_sweep(spec, tmp_path, progress=False) == []  # a diverged run is a result, not redone


def test_locked_run_is_left_to_its_owner(tiny_spec_file, tmp_path):
    spec = load_spec(tiny_spec_file(max_steps=4, ranks=(1, 2)))
    held = spec.expand()[0].run_id
    with run_lock(tmp_path, held):
        with pytest.raises(RunLocked, match="being run by another process"):
            with run_lock(tmp_path, held):
                pass
        outcomes = run_sweep(spec, tmp_path, progress=False)
    assert {o["run_id"]: o["status"] for o in outcomes}[held] == "locked"
    assert not (tmp_path / f"{held}.parquet").exists()
    assert len(load_runs(tmp_path).run_id.unique()) == 1


def test_two_sweeps_at_once_share_a_runs_dir(tiny_spec_file, tmp_path):
    path = tiny_spec_file(max_steps=6, ranks=(1, 2, 3))
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "forgetting_laws.cli", "sweep", str(path), "--out", str(out), "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stdout.read().decode()
    df = load_runs(out)
    assert sorted(df["rank"].unique()) == [1, 2, 3]
    assert not df.duplicated(["run_id", "step"]).any()
    assert run_sweep(load_spec(path), out, progress=False) == []


def test_resume_after_sigkill_equals_uninterrupted(tiny_spec_file, tmp_path):
    path = tiny_spec_file(max_steps=40, ranks=(2,))
    ref_dir, killed_dir = tmp_path / "ref", tmp_path / "killed"
    run_sweep(load_spec(path), ref_dir, progress=False)
    run_id = load_spec(path).expand()[0].run_id
    rows = killed_dir / ".checkpoints" / run_id / "rows.parquet"
    cmd = [sys.executable, "-m", "forgetting_laws.cli", "sweep", str(path), "--out", str(killed_dir), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for a checkpoint past step 8, then kill hard
        ckpts = list((killed_dir / ".checkpoints" / run_id).glob("checkpoint-*"))
        if rows.exists() and any(int(c.name.split("-")[1]) >= 8 and (c / ".complete").exists() for c in ckpts):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / f"{run_id}.parquet").exists(), "the run finished before it was killed"
    assert main(["sweep", str(path), "--out", str(killed_dir), "--quiet"]) == 0
    ref, resumed = load_runs(ref_dir), load_runs(killed_dir)
    assert not resumed.duplicated(["run_id", "step"]).any()
    assert resumed.step.tolist() == ref.step.tolist()
    for col in VALUE_COLS:
        np.testing.assert_allclose(resumed[col], ref[col], rtol=1e-5, atol=1e-6, err_msg=col)
    assert (resumed.wall_s.diff().iloc[1:] >= 0).all()


def test_unknown_schema_version_is_refused(tmp_path):
    pd.DataFrame({"run_id": ["x"], "step": [0], "schema_version": [99]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(SchemaError, match=r"schema_version \[99\] is not supported.*pip install -U forgetting-laws"):
        load_runs(tmp_path)


def test_load_runs_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no readable run parquet files"):
        load_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="no runs at"):
        load_runs(tmp_path / "nowhere")


@pytest.mark.parametrize("edit, match", [
    (("lee-news", "no-such-corpus"), r"data.dataset = 'no-such-corpus' is not a known corpus; use one of lee-news, python-docs"),
    (("tiny-random-llama", "no-such-model"), r"model.name = 'no-such-model' is not a known alias.*tiny-random-llama"),
    (("heldout_blocks = 4", "heldout_blocks = 100000"), r"data.heldout_blocks = 100000: corpus 'lee-news' has only \d+ blocks"),
    (("reference_blocks = 4", "reference_blocks = 100000"), r"data.reference_blocks = 100000: corpus 'python-docs' has only"),
])
def test_bad_input_fails_before_any_run_and_keeps_results(tiny_spec_file, tmp_path, edit, match, capsys):
    good = tiny_spec_file(max_steps=2, ranks=(1,))
    out = tmp_path / "runs"
    assert main(["sweep", str(good), "--out", str(out), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.*") if p.is_file()}
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace(*edit))
    assert main(["sweep", str(bad), "--out", str(out), "--quiet"]) == 2
    assert __import__("re").search(match, capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.glob("*.*") if p.is_file()} == before


def test_dry_run_lists_runs_and_estimates(tiny_spec_file, tmp_path, capsys):
    path = tiny_spec_file(max_steps=5, ranks=(1, 8))
    assert main(["sweep", str(path), "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 runs, 2 to do" in out and "estimated time" in out
    assert not list(tmp_path.glob("*.parquet"))


def test_the_demo_spec_on_the_tiny_model_gives_the_rows_it_gave_before_the_redesign(tmp_path):
    """``tests/data/demo_tiny_rows_d74bb5d.csv`` holds the rows the code of commit d74bb5d (before
    the measuring half was redesigned) wrote for the demo spec on the tiny random model (2 blocks x
    32 tokens, ranks 1 and 4, 8 steps, eager). Today's code must write the same numbers."""
    from forgetting_laws.measure.spec import SweepSpec, parse_spec, spec_path
    from conftest import REPO

    raw = parse_spec(spec_path("demo").read_text(), "demo")
    raw["model"]["name"] = "tiny-random-llama"
    raw["data"]["seq_len"], raw["train"]["max_steps"], raw["train"]["batch_size"] = 32, 8, 2
    raw["train"]["compile"], raw["grid"]["lora.rank"] = False, [1, 4]
    run_sweep(SweepSpec.from_dict(raw), tmp_path, progress=False)
    golden = pd.read_csv(REPO / "tests" / "data" / "demo_tiny_rows_d74bb5d.csv")
    rows = load_runs(tmp_path)[list(golden.columns)].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, golden, check_dtype=False, rtol=1e-6, atol=1e-7)
