"""Fine-tuning methods on the tiny random model: SAM, I-LoRA, replay, the registry and its errors."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from scipy import stats

from forgetting_laws import load_runs
from forgetting_laws.cli import main
from forgetting_laws.measure.spec import ConfigError, SweepSpec, load_spec
from forgetting_laws.measure.methods import make_method, method_names
from forgetting_laws.measure.methods.ilora import ReservoirBuffer, consistency_loss
from forgetting_laws.measure.methods.replay import replay_pool
from forgetting_laws.measure.probes import ProbeData, probe
from forgetting_laws.measure.setup import prepare_run
from forgetting_laws.measure.sweep import run_sweep
from forgetting_laws.measure.train import build_trainer

TINY = {"sweep": {"name": "tiny"}, "model": {"name": "tiny-random-llama"},
        "data": {"seq_len": 32, "heldout_blocks": 4, "reference_blocks": 4},
        "train": {"max_steps": 1, "batch_size": 2, "lr": 1e-2}, "lora": {"rank": 2}}


def tiny_run(method=None, **train):
    raw = {**TINY, "train": {**TINY["train"], **train}, "method": method or {}}
    return SweepSpec.from_dict(raw).expand()[0]


def setup(spec, n_blocks=None):
    """(method, peft model, training blocks) of a tiny run, set up as run_one does."""
    ctx = prepare_run(spec)
    train = ctx.data.train
    return ctx.method, ctx.method.build_model(ctx.model), train[:n_blocks] if n_blocks else train


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def randomise_b(model, seed=1):
    """LoRA B = 0 at initialisation makes A's gradient zero; give B values to test both."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------------------------- SAM


def hand_sam_step(model, blocks, rho, adaptive, lr):
    """One SAM step with plain SGD, written out: w - lr * grad L(w + e)."""
    params = [p for p in model.parameters() if p.requires_grad]
    ids = torch.from_numpy(blocks)
    w = [p.detach().clone() for p in params]
    g = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, params)
    if adaptive:
        norm = torch.cat([(wi.abs() * gi).flatten() for wi, gi in zip(w, g)]).norm()
        e = [rho * wi**2 * gi / norm for wi, gi in zip(w, g)]
    else:
        norm = torch.cat([gi.flatten() for gi in g]).norm()
        e = [rho * gi / norm for gi in g]
    with torch.no_grad():
        for p, ei in zip(params, e):
            p.add_(ei)
    g2 = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, params)
    return [wi - lr * gi for wi, gi in zip(w, g2)]


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_step_equals_hand_computed_two_pass_update(adaptive, tmp_path):
    # batch 2 x 2 accumulation steps over exactly 4 blocks: one update sees all of them
    spec = tiny_run({"name": "sam", "rho": 0.5, "adaptive": adaptive}, optimizer="sgd", grad_accum=2,
                    max_grad_norm=0.0, lr=0.1)
    method, model, blocks = setup(spec, n_blocks=4)
    randomise_b(model)
    _, hand_model, _ = setup(spec, n_blocks=4)
    randomise_b(hand_model)
    expected = hand_sam_step(hand_model, blocks, 0.5, adaptive, 0.1)
    build_trainer(spec, method, model, blocks, tmp_path).train()
    got = [p.detach() for p in model.parameters() if p.requires_grad]
    before = [p.detach() for p in hand_model.parameters() if p.requires_grad]
    assert any(not torch.allclose(a, b) for a, b in zip(got, before))  # it moved
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_sam_with_rho_zero_is_the_base_optimiser_step(tmp_path):
    common = dict(max_steps=3, grad_accum=2, max_grad_norm=1.0)  # AdamW, clipping, accumulation
    sam = tiny_run({"name": "sam", "rho": 0.0}, **common)
    lora = tiny_run(**common)
    results = []
    for i, spec in enumerate([sam, lora]):
        method, model, blocks = setup(spec)
        build_trainer(spec, method, model, blocks, tmp_path / str(i)).train()
        results.append(trainable(model))
    assert results[0].keys() == results[1].keys()
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name


# ----------------------------------------------------------------------------------- I-LoRA


def ilora_run(ema, **knobs):
    return tiny_run({"name": "ilora", "ema": ema, "buffer_size": 8, "replay_ratio": 0.5, **knobs}, max_steps=3)


def test_ilora_lambda_zero_keeps_slow_equal_to_fast(tmp_path):
    spec = ilora_run(0.0)
    method, model, blocks = setup(spec)
    build_trainer(spec, method, model, blocks, tmp_path).train()
    fast = trainable(model)
    assert any(n for n in fast if "lora_B" in n and fast[n].any())  # the fast adapter learned
    for name, p in fast.items():
        assert torch.equal(method.slow[name], p), name


def test_ilora_lambda_one_keeps_slow_frozen(tmp_path):
    spec = ilora_run(1.0)
    method, model, blocks = setup(spec)
    start = {n: t.clone() for n, t in method.slow.items()}
    build_trainer(spec, method, model, blocks, tmp_path).train()
    fast = trainable(model)
    assert any(not torch.equal(fast[n], start[n]) for n in start)
    for name, t in start.items():
        assert torch.equal(method.slow[name], t), name


def test_consistency_loss_is_zero_for_equal_adapters():
    method, model, _ = setup(ilora_run(0.5))
    randomise_b(model)
    method.slow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ids = method.replay_batch()
    h_fast = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    assert consistency_loss(h_fast, method.slow_hidden(ids)).item() == 0.0
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(0.1)
    h_fast = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    assert consistency_loss(h_fast, method.slow_hidden(ids)).item() > 0


def test_reservoir_keeps_every_item_with_equal_probability():
    n_items, size, trials = 20, 5, 4000
    counts = np.zeros(n_items)
    for t in range(trials):
        buf = ReservoirBuffer(size, seed=t)
        for i in range(n_items):
            buf.add(i)
        assert len(buf.items) == size and len(set(buf.items)) == size
        counts[buf.items] += 1
    expected = trials * size / n_items
    assert stats.chisquare(counts, np.full(n_items, expected)).pvalue > 1e-3
    assert abs(counts.mean() - expected) < 1e-9


def test_reservoir_state_round_trips():
    a = ReservoirBuffer(3, seed=0)
    for i in range(10):
        a.add(i)
    b = ReservoirBuffer(3, seed=99)
    b.load_state_dict(a.state_dict())
    for i in range(10, 30):
        a.add(i)
        b.add(i)
    assert a.items == b.items and a.sample(2) == b.sample(2)


def test_probes_evaluate_the_slow_adapter_by_default(tmp_path):
    spec = ilora_run(0.9)
    assert spec.method.config.eval_adapter == "slow"
    method, model, blocks = setup(spec)
    build_trainer(spec, method, model, blocks, tmp_path).train()
    ids = torch.from_numpy(blocks[:4])
    data = ProbeData(ids, ids[:, 1:], ids)
    fast = trainable(model)
    with method.probe_model(model) as m:
        via_method = probe(m, data, 4)
    via_method.pop("forget_kl")  # NaN: not asked for
    assert all(torch.equal(p, fast[n]) for n, p in trainable(model).items())  # fast restored
    fast_probe = probe(model, data, 4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(method.slow[n])
    slow_probe = probe(model, data, 4)
    slow_probe.pop("forget_kl")
    assert via_method == slow_probe
    assert via_method["ft_loss"] != fast_probe["ft_loss"]


def test_sweep_probes_slow_unless_told_fast(tmp_path):
    raw = {**TINY, "train": {**TINY["train"], "max_steps": 3},
           "method": {"name": "ilora", "ema": 0.9, "buffer_size": 8},
           "grid": {"method.eval_adapter": ["slow", "fast"]}}
    run_sweep(SweepSpec.from_dict(raw), tmp_path, progress=False)
    df = load_runs(tmp_path)
    by = {a: g.sort_values("step") for a, g in df.groupby("ilora_eval_adapter")}
    assert by["slow"].forget_loss.iloc[0] == by["fast"].forget_loss.iloc[0]  # step 0: both the base
    assert (by["slow"].ft_loss.iloc[1:].values != by["fast"].ft_loss.iloc[1:].values).all()


# ----------------------------------------------------------------------------------- replay


@pytest.mark.parametrize("ratio, batch, n", [(0.5, 2, 1), (0.25, 4, 1), (0.75, 4, 3)])
def test_replay_fraction_of_each_batch_is_as_configured(ratio, batch, n, tmp_path):
    spec = tiny_run({"name": "replay", "replay_ratio": ratio}, batch_size=batch, max_steps=2, grad_accum=2)
    method, model, blocks = setup(spec)
    pool = {bytes(b) for b in method.pool.numpy()}
    seen = []
    mix = method.mix

    def recording_mix(inputs):
        out = mix(inputs)
        seen.append([bytes(r) for r in out["input_ids"].numpy()])
        return out

    method.mix = recording_mix
    build_trainer(spec, method, model, blocks, tmp_path).train()
    assert len(seen) == 4  # 2 steps x 2 micro-batches
    for rows in seen:
        assert len(rows) == batch and sum(r in pool for r in rows) == n
        assert n / batch == ratio


@pytest.mark.parametrize("replay", ["python-docs", "lee-news"])
def test_replay_blocks_never_overlap_the_probe_blocks(replay):
    spec = tiny_run({"name": "replay", "replay": replay})
    ctx = prepare_run(spec)
    heldout, reference = ctx.data.heldout, ctx.data.reference
    pool = {bytes(b) for b in replay_pool(spec, ctx.tokenizer, ctx.model_key)[0]}
    assert len(pool) > 10
    assert not pool & {bytes(b) for b in reference} and not pool & {bytes(b) for b in heldout}


# --------------------------------------------------------------------------- registry and spec


def test_registry_and_columns():
    assert method_names() == ["ilora", "lora", "replay", "sam"]
    sam = make_method(tiny_run({"name": "sam", "rho": 0.1, "ema": 0.9}))
    assert sam.extra_columns() == {"sam_rho": 0.1, "sam_adaptive": False}
    assert make_method(tiny_run()).extra_columns() == {}


def test_run_id_ignores_other_methods_knobs():
    a = tiny_run({"name": "sam", "rho": 0.1})
    b = tiny_run({"name": "sam", "rho": 0.1, "ema": 0.9, "replay_ratio": 0.25})
    assert a.run_id == b.run_id and a.run_id.startswith("sam-r2-")
    assert a.run_id != tiny_run({"name": "sam", "rho": 0.2}).run_id
    assert tiny_run().run_id == tiny_run({"rho": 0.3}).run_id == tiny_run({"name": "lora"}).run_id


def test_method_grid_expands_once_per_distinct_run():
    raw = {**TINY, "method": {"rho": 0.1}, "grid": {"method.name": ["lora", "sam"], "method.rho": [0.1, 0.2]}}
    runs = SweepSpec.from_dict(raw).expand()
    assert [(r.method.name, r.method.settings.get("rho")) for r in runs] == [("lora", None), ("sam", 0.1), ("sam", 0.2)]


@pytest.mark.parametrize("method, match", [
    ({"name": "ewc"}, r"method.name = 'ewc' is not a registered method; methods: ilora, lora, replay, sam"),
    ({"name": "sam", "rhoo": 1}, r"unknown field method.rhoo; fields of \[method\]: name, replay, replay_ratio, .*rho"),
    ({"name": "sam", "rho": -0.1}, r"method.rho = -0.1, must be >= 0"),
    ({"name": "sam", "adaptive": "yes"}, r"method.adaptive = 'yes' has type str, expected bool"),
    ({"name": "ilora", "ema": 1.5}, r"method.ema = 1.5, must be in \[0, 1\]"),
    ({"name": "ilora", "eval_adapter": "mean"}, r"method.eval_adapter = 'mean'; allowed values: 'slow', 'fast'"),
    ({"name": "ilora", "buffer_size": 0}, r"method.buffer_size = 0, must be > 0"),
    ({"name": "replay", "replay_ratio": 1.0}, r"method.replay_ratio = 1.0, must be in \(0, 1\)"),
    ({"name": "replay", "replay_ratio": 0.1}, r"method.replay_ratio = 0.1 gives 0 replay blocks in a batch of train.batch_size = 2"),
])
def test_bad_method_specs_name_field_value_and_fix(method, match):
    with pytest.raises(ConfigError, match=match):
        SweepSpec.from_dict({**TINY, "method": method})


def test_bad_method_in_grid_fails_before_any_run(tiny_spec_file, tmp_path, capsys):
    path = tiny_spec_file(max_steps=2, ranks=(1,), extra='"method.name" = ["lora", "ewc"]\n')
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    assert "method.name = 'ewc' is not a registered method" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unknown_replay_corpus_fails_before_any_run(tiny_spec_file, tmp_path, capsys):
    path = tiny_spec_file(max_steps=2, ranks=(1,), extra='"method.name" = ["lora", "replay"]\n')
    path.write_text(path.read_text() + '[method]\nreplay = "no-such-corpus"\n')
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    assert "method.replay = 'no-such-corpus' is not a known corpus" in capsys.readouterr().err
    assert not list(tmp_path.glob("runs/*.parquet"))


def test_mitigation_spec_validates():
    from conftest import REPO

    spec = load_spec(REPO / "forgetting_laws" / "specs" / "mitigation.toml")
    runs = spec.expand()
    assert {r.method.name for r in runs} == {"lora", "sam", "ilora", "replay"}
    assert len({r.lora.rank for r in runs}) >= 2
    assert spec.base.model.name == "smollm2-135m" and spec.base.data.dataset == "lee-news"
    assert spec.base.data.reference == "python-docs"


# --------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("method", ["ilora", "replay", "sam"])
def test_resume_after_sigkill_equals_uninterrupted(method, tiny_spec_file, tmp_path):
    path = tiny_spec_file(max_steps=40, ranks=(2,))  # long enough to be killed midway on a busy machine
    path.write_text(path.read_text() + f'[method]\nname = "{method}"\nema = 0.8\nbuffer_size = 6\n')
    ref_dir, killed_dir = tmp_path / "ref", tmp_path / "killed"
    run_sweep(load_spec(path), ref_dir, progress=False)
    run_id = load_spec(path).expand()[0].run_id
    ckpt_dir = killed_dir / ".checkpoints" / run_id
    cmd = [sys.executable, "-m", "forgetting_laws.cli", "sweep", str(path), "--out", str(killed_dir), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # a complete checkpoint past step 4, then kill hard
        if any(int(c.name.split("-")[1]) >= 4 and (c / ".complete").exists() for c in ckpt_dir.glob("checkpoint-*")):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / f"{run_id}.parquet").exists(), "the run finished before it was killed"
    has_state = any((c / "method_state.pt").exists() for c in ckpt_dir.glob("checkpoint-*"))
    assert has_state == (method != "sam")  # SAM keeps nothing beyond the Trainer's own checkpoint
    assert main(["sweep", str(path), "--out", str(killed_dir), "--quiet"]) == 0
    ref, resumed = load_runs(ref_dir), load_runs(killed_dir)
    assert resumed.step.tolist() == ref.step.tolist()
    for col in ["ft_loss", "ft_train_loss", "forget_loss", "ref_loss", "agreement"]:
        np.testing.assert_allclose(resumed[col], ref[col], rtol=1e-5, atol=1e-6, err_msg=col)
