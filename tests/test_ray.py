"""The ray executor on a local Ray with 2 CPUs: same table as local, retries, failures, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from filelock import FileLock
import pytest
import ray

from forgetting_laws import load_runs
from forgetting_laws.cli import main
from forgetting_laws.measure.spec import ConfigError, SweepSpec, load_spec
from forgetting_laws.measure.sweep import run_sweep

TESTS = Path(__file__).resolve().parent
VALUE_COLS = ["ft_loss", "ft_train_loss", "forget_loss", "ref_loss", "agreement", "trainable_params"]


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """Workers import tests/ray_fault.py (a plugin); returns the folder that sets its faults.

    The environment is the same for every test of the module, so Ray starts its workers (and
    their torch import) once and reuses them.
    """
    import ray_fault

    folder = tmp_path_factory.mktemp("faults")
    ray_fault.set_faults(folder, 0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORGETTING_LAWS_PLUGINS", "ray_fault")
        mp.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        mp.setenv(ray_fault.FAULTS_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def local_ray(faults):
    """One local Ray (2 CPUs) for the module: the executor uses a Ray already initialised."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_sweep_gives_the_local_table(local_ray, tiny_spec_file, tmp_path):
    spec = load_spec(tiny_spec_file(max_steps=8, ranks=(1, 4)))
    local = run_sweep(spec, tmp_path / "local", progress=False)
    remote = run_sweep(spec, tmp_path / "ray", executor="ray", progress=False)
    assert [o["run_id"] for o in remote] == [o["run_id"] for o in local] == [r.run_id for r in spec.expand()]
    assert {o["status"] for o in remote} == {"complete"}
    a, b = load_runs(tmp_path / "local"), load_runs(tmp_path / "ray")
    assert a.run_id.tolist() == b.run_id.tolist() and a.step.tolist() == b.step.tolist()
    for col in VALUE_COLS:
        np.testing.assert_allclose(b[col], a[col], rtol=1e-5, atol=1e-6, err_msg=col)
    for run_id in a.run_id.unique():
        assert json.loads((tmp_path / "ray" / "_meta" / f"{run_id}.json").read_text())["status"] == "complete"
    assert run_sweep(spec, tmp_path / "ray", executor="ray", progress=False) == []  # nothing left


def _flaky_spec(tiny_spec_file, max_retries: int) -> SweepSpec:
    path = tiny_spec_file(max_steps=4, ranks=(1,), extra='"model.name" = ["tiny-random-llama", "tiny-flaky-llama"]\n')
    raw = load_spec(path).to_dict()
    raw["sweep"]["max_retries"] = max_retries
    return SweepSpec.from_dict(raw)


@pytest.mark.slow
def test_failing_run_is_retried_then_marked_failed_and_the_rest_complete(local_ray, faults, tiny_spec_file,
                                                                        tmp_path):
    from ray_fault import set_faults

    spec = _flaky_spec(tiny_spec_file, max_retries=2)
    flaky, good = sorted(spec.expand(), key=lambda r: r.model.name != "tiny-flaky-llama")
    attempts = set_faults(faults, 99)  # every attempt fails
    out = tmp_path / "runs"
    outcomes = {o["run_id"]: o for o in run_sweep(spec, out, executor="ray", progress=False)}
    assert outcomes[good.run_id]["status"] == "complete"
    assert outcomes[flaky.run_id]["status"] == "failed"
    assert "injected failure on attempt 3" in outcomes[flaky.run_id]["error"]
    assert len(attempts.read_text().splitlines()) == 3  # the first attempt + max_retries = 2
    meta = json.loads((out / "_meta" / f"{flaky.run_id}.json").read_text())
    assert meta["status"] == "failed" and meta["attempts"] == 3
    assert "RuntimeError: injected failure" in meta["traceback"]
    assert not (out / f"{flaky.run_id}.parquet").exists()
    assert load_runs(out).run_id.unique().tolist() == [good.run_id]

    set_faults(faults, 0)  # the fault is gone: a rerun retries the failed run
    again = run_sweep(spec, out, executor="ray", progress=False)
    assert [(o["run_id"], o["status"]) for o in again] == [(flaky.run_id, "complete")]
    df = load_runs(out)
    assert sorted(df.run_id.unique()) == sorted([flaky.run_id, good.run_id])
    assert not df.duplicated(["run_id", "step"]).any()


@pytest.mark.slow
def test_run_that_fails_once_succeeds_on_its_retry(local_ray, faults, tiny_spec_file, tmp_path):
    from ray_fault import set_faults

    spec = _flaky_spec(tiny_spec_file, max_retries=1)
    attempts = set_faults(faults, 1)
    outcomes = run_sweep(spec, tmp_path / "runs", executor="ray", progress=False)
    assert {o["status"] for o in outcomes} == {"complete"}
    assert len(attempts.read_text().splitlines()) == 2
    steps = load_runs(tmp_path / "runs").groupby("run_id").step.apply(list)
    assert steps.iloc[0] == steps.iloc[1] == [0, 1, 2, 4]  # the retry resumed: no step twice


@pytest.mark.slow
def test_killed_driver_then_rerun_resumes_without_duplicates(local_ray, tiny_spec_file, tmp_path):
    path = tiny_spec_file(max_steps=24, ranks=(1, 2, 3))
    out = tmp_path / "runs"
    run_ids = [r.run_id for r in load_spec(path).expand()]
    cmd = [sys.executable, "-m", "forgetting_laws.cli", "sweep", str(path), "--out", str(out),
           "--executor", "ray", "--ray-cpus", "2", "--quiet"]
    # its own session: the driver's local Ray processes can be cleaned up as one group afterwards
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("*.parquet")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the driver dies mid-sweep
    proc.wait()
    finished = list(out.glob("*.parquet"))
    assert 1 <= len(finished) < len(run_ids), "the sweep was not killed mid-way"
    for run_id in run_ids:  # its local Ray goes down with it; its workers exit within seconds
        with FileLock(out / ".locks" / f"{run_id}.lock").acquire(timeout=120):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # Ray's agents the driver started in its session, if any linger
    except ProcessLookupError:
        pass
    assert main(["sweep", str(path), "--out", str(out), "--executor", "ray", "--quiet"]) == 0
    df = load_runs(out)
    assert sorted(df.run_id.unique()) == sorted(run_ids)
    assert not df.duplicated(["run_id", "step"]).any()
    assert all(steps == [0, 1, 2, 4, 8, 12, 16, 20, 24]
               for steps in df.groupby("run_id").step.apply(list))
    assert not list((out / ".checkpoints").glob("*/checkpoint-*"))


def test_runs_no_node_can_hold_are_refused(local_ray, tiny_spec_file, tmp_path):
    raw = load_spec(tiny_spec_file(max_steps=2, ranks=(1,))).to_dict()
    raw["sweep"]["num_gpus"] = 1
    with pytest.raises(ConfigError, match=r"sweep.num_gpus = 1 per run, but the Ray cluster has 0 GPUs"):
        run_sweep(SweepSpec.from_dict(raw), tmp_path, executor="ray", progress=False)


def test_cli_overrides_and_flag_errors(tiny_spec_file, tmp_path, capsys):
    path = tiny_spec_file(max_steps=2, ranks=(1,))
    assert main(["sweep", str(path), "--out", str(tmp_path), "--address", "auto"]) == 2
    assert "--address only apply with --executor ray" in capsys.readouterr().err
    assert main(["sweep", str(path), "--out", str(tmp_path), "--num-gpus", "-1", "--dry-run"]) == 2
    assert "sweep.num_gpus = -1.0, must be >= 0" in capsys.readouterr().err


def test_missing_ray_says_what_to_install(tiny_spec_file, tmp_path, monkeypatch):
    from forgetting_laws.measure.ray_executor import ray_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    run = load_spec(tiny_spec_file(max_steps=2, ranks=(1,))).expand()[0]
    with pytest.raises(ImportError, match=r"executor 'ray' needs Ray: pip install 'forgetting-laws\[ray\]'"):
        ray_executor([run], tmp_path, progress=False)
