"""The within-run scale knobs: activation checkpointing, gradient accumulation over devices."""

import numpy as np
import torch
import pytest

from forgetting_laws import load_runs
from forgetting_laws.measure.spec import ConfigError, SweepSpec, load_spec
from forgetting_laws.measure.distributed import accumulation_per_device
from forgetting_laws.measure.sweep import run_sweep
from forgetting_laws.measure.setup import resolve_device
from forgetting_laws.measure.train import _training_args

VALUE_COLS = ["ft_loss", "ft_train_loss", "forget_loss", "ref_loss", "agreement"]


def _with(spec_path, **train):
    raw = load_spec(spec_path).to_dict()
    raw["train"].update(train)
    return SweepSpec.from_dict(raw)


def test_activation_checkpointing_changes_memory_not_results(tiny_spec_file, tmp_path):
    path = tiny_spec_file(max_steps=6, ranks=(2,))
    plain, ckpt = _with(path), _with(path, gradient_checkpointing=True)
    assert plain.expand()[0].run_id == ckpt.expand()[0].run_id  # an execution setting, not a result
    run_sweep(plain, tmp_path / "plain", progress=False)
    run_sweep(ckpt, tmp_path / "ckpt", progress=False)
    a, b = load_runs(tmp_path / "plain"), load_runs(tmp_path / "ckpt")
    for col in VALUE_COLS:
        np.testing.assert_allclose(b[col], a[col], rtol=1e-5, atol=1e-6, err_msg=col)


def test_training_args_carry_the_knobs(tiny_spec_file, tmp_path):
    run = _with(tiny_spec_file(), grad_accum=4, gradient_checkpointing=True).expand()[0]
    device, dtype = resolve_device(run)
    args = _training_args(run, tmp_path, device, dtype, run.train.batch_size)
    assert args.gradient_accumulation_steps == 4 and args.per_device_train_batch_size == 2
    checkpointing = getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing
    assert checkpointing is True
    assert not args.bf16 and not args.dataloader_pin_memory  # the CPU path: float32, no pinning


def test_grad_accum_splits_over_the_devices_of_a_launch(tiny_spec_file, tmp_path, monkeypatch):
    assert accumulation_per_device(8, 4, world=1) == 4
    assert accumulation_per_device(8, 4, world=4) == 1
    with pytest.raises(ConfigError, match=r"train.grad_accum = 4 does not split over 3 devices.*32 blocks"):
        accumulation_per_device(8, 4, world=3)
    run = _with(tiny_spec_file(), grad_accum=4).expand()[0]
    # under torchrun (WORLD_SIZE=2) each device does half the micro-batches; the world size is
    # patched where train.py reads it, as a real WORLD_SIZE would make accelerate want a process group
    monkeypatch.setattr("forgetting_laws.measure.train.world_size", lambda: 2)
    args = _training_args(run, tmp_path, *resolve_device(run), run.train.batch_size)
    assert args.gradient_accumulation_steps == 2


@pytest.mark.slow
def test_torchrun_on_two_processes_gives_the_single_process_table(tiny_spec_file, tmp_path):
    """The multi-GPU path on CPU (gloo): 2 processes x 1 micro-batch = 1 process x 2 micro-batches."""
    import subprocess
    import sys

    path = tiny_spec_file(max_steps=4, ranks=(1,))
    path.write_text(path.read_text().replace("lr = 1e-2", "lr = 1e-2\ngrad_accum = 2"))
    run_sweep(load_spec(path), tmp_path / "single", progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "forgetting_laws.cli", "sweep", str(path), "--out", str(tmp_path / "ddp"), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_runs(tmp_path / "single"), load_runs(tmp_path / "ddp")
    assert a.run_id.tolist() == b.run_id.tolist() and a.tokens_seen.tolist() == b.tokens_seen.tolist()
    for col in VALUE_COLS:
        np.testing.assert_allclose(b[col], a[col], rtol=1e-5, atol=1e-6, err_msg=col)
    meta = __import__("json").loads((tmp_path / "ddp" / "_meta" / f"{a.run_id[0]}.json").read_text())
    assert meta["world_size"] == 2 and meta["status"] == "complete"


def test_a_bfloat16_run_saves_its_adapter_and_rows_like_a_float32_run(tiny_spec_file, tmp_path):
    """The bf16 path: frozen base in bfloat16 under autocast, the adapter and the optimiser in float32;
    the precision (training and probes) enters the run id, the sidecar and the rows."""
    import json

    from safetensors.torch import load_file

    from forgetting_laws import load_runs
    from forgetting_laws.measure.spec import SweepSpec
    from forgetting_laws.measure.sweep import run_sweep

    raw = load_spec(tiny_spec_file(max_steps=4, ranks=(2,))).to_dict()
    raw["train"]["save_adapter"] = True
    runs = {}
    for dtype, precision in (("float32", "float32"), ("bfloat16", "float32"), ("bfloat16", "run")):
        spec = SweepSpec.from_dict({**raw, "model": {**raw["model"], "dtype": dtype},
                                    "probe": {**raw["probe"], "precision": precision}})
        (run,) = spec.expand()
        assert run_sweep(spec, tmp_path, progress=False)[0]["status"] == "complete"
        runs[dtype, precision] = run.run_id
    assert len(set(runs.values())) == 3
    df = load_runs(tmp_path)
    for (dtype, precision), run_id in runs.items():
        rows = df[df.run_id == run_id]
        assert rows.step.tolist() == [0, 1, 2, 4] and rows[["ft_loss", "forget_loss"]].notna().all().all()
        assert set(rows.dtype) == {dtype} and set(rows.probe_precision) == {precision}
        meta = json.loads((tmp_path / "_meta" / f"{run_id}.json").read_text())
        assert meta["spec"]["model"]["dtype"] == dtype and meta["dtype"] == f"torch.{dtype}"
        weights = load_file(tmp_path / "_adapters" / run_id / "adapter_model.safetensors")
        assert {t.dtype for t in weights.values()} == {torch.float32}  # the adapter stays in float32
    fp32, bf16 = (df[df.run_id == runs[k]].reset_index() for k in (("float32", "float32"), ("bfloat16", "float32")))
    assert (bf16.ft_loss - fp32.ft_loss).abs().max() < 0.05  # same training, in bfloat16


def test_tensorboard_gets_the_training_loss_and_every_probe(tiny_spec_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = load_spec(tiny_spec_file(max_steps=4, ranks=(2,))).to_dict()
    raw["train"]["report_to"] = ["tensorboard"]
    spec = SweepSpec.from_dict(raw)
    run_sweep(spec, tmp_path, progress=False)
    (run,) = spec.expand()
    logs = EventAccumulator(str(tmp_path / "_logs" / run.run_id)).Reload()
    tags = set(logs.Tags()["scalars"])
    assert any(t.endswith("loss") and "probe" not in t for t in tags), tags
    forget = next(t for t in tags if t.endswith("probe/forget_loss"))
    df = load_runs(tmp_path)
    logged = {e.step: e.value for e in logs.Scalars(forget)}
    assert sorted(logged) == df.step.tolist()
    np.testing.assert_allclose([logged[s] for s in df.step], df.forget_loss, rtol=1e-6)
    assert run_id_unchanged(spec)


def run_id_unchanged(spec) -> bool:
    """Trackers say how a run reports, not what it computes: they stay out of the run id."""
    raw = spec.to_dict()
    raw["train"]["report_to"] = []
    return SweepSpec.from_dict(raw).expand()[0].run_id == spec.expand()[0].run_id
