"""Fine-tuning methods on the tiny random model: SAM, I-LoRA, replay, distill, compositions, the registry
and its errors."""

import dataclasses
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
from forgetting_laws.measure.methods.ilora import ReservoirBuffer, consistency_loss, ema_lambda
from forgetting_laws.measure.methods.replay import replay_pool
from forgetting_laws.measure.methods.sam import sam_perturbation
from forgetting_laws.measure.models import load_model
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


def randomise_b(model, seed=1, scale=0.05):
    """LoRA B = 0 at initialisation makes A's gradient zero; give B values to test both."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(scale * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------------------------- SAM


def hand_sam_step(model, blocks, rho, adaptive, lr, eta=0.01):
    """One SAM step with plain SGD, written out: w - lr * grad L(w + e); ASAM with T = |w| + eta."""
    params = [p for p in model.parameters() if p.requires_grad]
    ids = torch.from_numpy(blocks)
    w = [p.detach().clone() for p in params]
    g = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, params)
    if adaptive:
        norm = torch.cat([((wi.abs() + eta) * gi).flatten() for wi, gi in zip(w, g)]).norm()
        e = [rho * (wi.abs() + eta) ** 2 * gi / norm for wi, gi in zip(w, g)]
    else:
        norm = torch.cat([gi.flatten() for gi in g]).norm()
        e = [rho * gi / norm for gi in g]
    with torch.no_grad():
        for p, ei in zip(params, e):
            p.add_(ei)
    g2 = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, params)
    return [wi - lr * gi for wi, gi in zip(w, g2)]


@pytest.mark.parametrize("adaptive, at_init", [(False, False), (True, False), (True, True)])
def test_sam_step_equals_hand_computed_two_pass_update(adaptive, at_init, tmp_path):
    # batch 2 x 2 accumulation steps over exactly 4 blocks: one update sees all of them
    spec = tiny_run({"name": "sam", "rho": 0.5, "adaptive": adaptive}, optimizer="sgd", grad_accum=2,
                    max_grad_norm=0.0, lr=0.1)
    method, model, blocks = setup(spec, n_blocks=4)
    _, hand_model, _ = setup(spec, n_blocks=4)
    if not at_init:  # at initialisation B = 0: ASAM's ascent on B comes from eta alone
        randomise_b(model)
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


def test_ilora_lambda_one_without_warmup_keeps_slow_frozen(tmp_path):
    spec = ilora_run(1.0, ema_warmup=False)  # with the warm-up, lambda_1 = min(1/2, 1) moves it
    method, model, blocks = setup(spec)
    start = {n: t.clone() for n, t in method.slow.items()}
    build_trainer(spec, method, model, blocks, tmp_path).train()
    fast = trainable(model)
    assert any(not torch.equal(fast[n], start[n]) for n in start)
    for name, t in start.items():
        assert torch.equal(method.slow[name], t), name


def test_asam_eta_perturbs_b_at_initialisation():
    """LoRA's B = 0 at init, so A's gradient is 0 and ASAM with T = |w| would not move anything."""
    method, model, blocks = setup(tiny_run({"name": "sam", "adaptive": True}))
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    ids = torch.from_numpy(blocks[:2])
    grads = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, params)
    for eta, moves_b in ((0.0, False), (0.01, True)):
        e = sam_perturbation(params, list(grads), rho=0.5, adaptive=True, eta=eta)
        e_b = [ei for n, ei in zip(names, e) if "lora_B" in n]
        assert any(ei.any() for ei in e_b) == moves_b, eta
    e = sam_perturbation(params, list(grads), rho=0.5, adaptive=True, eta=0.01)
    rescaled = torch.cat([(ei / (p.abs() + 0.01)).flatten() for ei, p in zip(e, params)])
    assert rescaled.norm().item() == pytest.approx(0.5, rel=1e-4)  # rho is the size in T^-1 e


def test_ema_warmup_equals_hand_computation(tmp_path):
    """lambda_t = min(1 - 1/(t + 1), lambda): t = 1, 2, 3 give 0.5, 2/3, 0.75 for lambda = 0.9."""
    from transformers import TrainerCallback

    assert [ema_lambda(t, 0.9) for t in (1, 2, 3, 9, 10)] == pytest.approx([0.5, 2 / 3, 0.75, 0.9, 0.9])
    assert ema_lambda(1, 0.25) == 0.25 and ema_lambda(1, 0.9, warmup=False) == 0.9
    spec = ilora_run(0.9)
    method, model, blocks = setup(spec)
    snapshots = [trainable(model)]  # fast at t = 0, then after each update

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # runs before the EMA's callback
            snapshots.append(trainable(model))

    build_trainer(spec, method, model, blocks, tmp_path, [Snapshot()]).train()
    slow = snapshots[0]
    for t, fast in enumerate(snapshots[1:], start=1):
        lam = min(1 - 1 / (t + 1), 0.9)
        slow = {n: lam * slow[n] + (1 - lam) * fast[n] for n in slow}
    assert len(snapshots) == 4
    for n, t in slow.items():
        torch.testing.assert_close(method.slow[n], t, rtol=1e-5, atol=1e-7)


def test_consistency_target_is_the_elementwise_max_over_every_layer():
    g = torch.Generator().manual_seed(0)
    h_fast = [torch.randn(2, 5, 3, generator=g, requires_grad=True) for _ in range(3)]
    h_slow = [torch.randn(2, 5, 3, generator=g) for _ in range(3)]
    got = consistency_loss(h_fast, h_slow)
    hand = torch.stack([(f - torch.maximum(f, s)).square().mean() for f, s in zip(h_fast, h_slow)]).mean()
    assert got.item() == pytest.approx(hand.item()) and got.item() > 0
    got.backward()
    for f, s in zip(h_fast, h_slow):
        assert not f.grad[f > s].any() and f.grad[f < s].all()  # pulled up only where fast < slow
    last = consistency_loss(h_fast, h_slow, "slow-last-layer")
    assert last.item() == pytest.approx(((h_fast[-1] - h_slow[-1]) ** 2).mean().item())
    assert consistency_loss(h_fast, h_fast).item() == 0.0


@pytest.mark.parametrize("target", ["max-every-layer", "slow-last-layer"])
def test_ilora_loss_adds_the_consistency_of_every_hidden_state(target):
    method, model, blocks = setup(ilora_run(0.5, consistency_target=target))
    randomise_b(model, seed=1)
    method.slow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    randomise_b(model, seed=2)  # fast and slow differ
    ids = torch.from_numpy(blocks[:1])
    inputs = method.augment({"input_ids": ids, "labels": ids})
    rep = inputs["replay_ids"]
    with_term = method.loss(model, inputs)
    method.config = dataclasses.replace(method.config, consistency=0.0)
    without = method.loss(model, inputs)
    h_fast = model(input_ids=rep, output_hidden_states=True).hidden_states
    with method.probe_model(model) as slow_model:
        h_slow = slow_model(input_ids=rep, output_hidden_states=True).hidden_states
    assert len(h_fast) == 3  # the embeddings' output and each of the 2 layers'
    if target == "slow-last-layer":
        h_fast, h_slow = h_fast[-1:], h_slow[-1:]
    hand = torch.cat([(f - (torch.maximum(f, s) if target == "max-every-layer" else s)).square().flatten()
                      for f, s in zip(h_fast, h_slow)]).mean()
    assert hand.item() > 0
    assert (with_term - without).item() == pytest.approx(hand.item(), rel=1e-4)


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
    augment = method.augment

    def recording(inputs):
        out = augment(inputs)
        seen.append(([bytes(r) for r in out["input_ids"].numpy()], [bytes(r) for r in out["replay_ids"].numpy()]))
        return out

    method.augment = recording
    build_trainer(spec, method, model, blocks, tmp_path).train()
    assert len(seen) == 4  # 2 steps x 2 micro-batches
    for current, replayed in seen:
        assert len(current) + len(replayed) == batch and len(replayed) == n
        assert all(r in pool for r in replayed) and not any(r in pool for r in current)
        assert n / batch == ratio


def hand_replay_loss(model, inputs, ratio, targets):
    """(1 - ratio) CE(current rows, data) + ratio CE(replay rows, targets), written out."""
    import torch.nn.functional as F

    def ce(ids, tgt):
        return F.cross_entropy(model(input_ids=ids).logits[:, :-1].flatten(0, 1), tgt.flatten())

    cur, rep = inputs["input_ids"], inputs["replay_ids"]
    return (1 - ratio) * ce(cur, cur[:, 1:]) + ratio * ce(rep, targets)


@pytest.mark.parametrize("name", ["replay", "distill", "ilora"])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_replay_weight_in_the_loss_is_replay_ratio_in_every_method(name, ratio, tmp_path):
    spec = tiny_run({"name": name, "replay_ratio": ratio, "buffer_size": 8, "consistency": 0.0}, batch_size=4)
    method, model, blocks = setup(spec)
    randomise_b(model)
    ids = torch.from_numpy(blocks[: 4 - int(ratio * 4)])
    inputs = method.augment({"input_ids": ids, "labels": ids})
    rep = inputs["replay_ids"]
    assert len(rep) == ratio * 4
    if name == "distill":
        with torch.no_grad(), model.disable_adapter():
            targets = model(input_ids=rep).logits[:, :-1].argmax(-1)
    else:
        targets = rep[:, 1:]
    trainer = build_trainer(spec, method, model, blocks, tmp_path)
    got = trainer.compute_loss(model, inputs)
    assert got.item() == pytest.approx(hand_replay_loss(model, inputs, ratio, targets).item(), rel=1e-5)


@pytest.mark.parametrize("target", ["argmax", "kl"])
def test_distill_targets_are_the_base_models_predictions(target):
    method, model, blocks = setup(tiny_run({"name": "distill", "distill_target": target}))
    randomise_b(model, scale=3.0)  # the adapter changes the predictions: the targets must come from the base
    ids = torch.from_numpy(blocks[:1])
    inputs = method.augment({"input_ids": ids, "labels": ids})
    base, _ = load_model("tiny-random-llama")
    with torch.no_grad():
        base_logits = base(input_ids=inputs["replay_ids"]).logits[:, :-1]
        adapted = model(input_ids=inputs["replay_ids"]).logits[:, :-1]
    assert not torch.equal(adapted.argmax(-1), base_logits.argmax(-1))
    if target == "argmax":
        assert torch.equal(inputs["replay_base"], base_logits.argmax(-1))
    else:
        torch.testing.assert_close(inputs["replay_base"], torch.log_softmax(base_logits, -1))
        logp = torch.log_softmax(adapted, -1)
        kl = (inputs["replay_base"].exp() * (inputs["replay_base"] - logp)).sum(-1).mean()
        assert method.replay_term(adapted, inputs).item() == pytest.approx(kl.item(), rel=1e-5)


@pytest.mark.parametrize("replay", ["python-docs", "lee-news"])
def test_replay_blocks_never_overlap_the_probe_blocks(replay):
    spec = tiny_run({"name": "replay", "replay": replay, "allow_replay_overlap": True})
    ctx = prepare_run(spec)
    heldout, reference = ctx.data.heldout, ctx.data.reference
    pool = {bytes(b) for b in replay_pool(spec, ctx.tokenizer, ctx.model_key)[0]}
    assert len(pool) > 10
    assert not pool & {bytes(b) for b in reference} and not pool & {bytes(b) for b in heldout}


# ------------------------------------------------------------------------------ compositions


def test_composition_has_a_stable_run_id_and_both_methods_columns():
    def run(method):  # float32 named: "auto" resolves per machine, and the id names the precision
        raw = {**TINY, "model": {**TINY["model"], "dtype": "float32"}, "method": method}
        return SweepSpec.from_dict(raw).expand()[0]

    a = run({"name": ["sam", "replay"], "rho": 0.1, "ema": 0.9})
    b = run({"name": ["replay", "sam"], "rho": 0.1})
    c = run({"name": "sam+replay", "rho": 0.1, "distill_target": "kl"})
    assert a.method.name == b.method.name == c.method.name == "sam+replay"
    assert a.run_id == b.run_id == c.run_id == "sam+replay-r2-6f192b3092cf"  # pinned: ids must not drift
    assert SweepSpec.from_dict(a.to_dict()).expand()[0].run_id == a.run_id  # the recorded spec reads back
    assert make_method(a).extra_columns() == {
        "sam_rho": 0.1, "sam_adaptive": False, "sam_eta": 0.01, "replay_corpus": "wiki-sample",
        "replay_ratio": 0.5, "replay_overlap_allowed": False}
    assert tiny_run({"name": ["sam", "ilora"]}).run_id.startswith("sam+ilora-r2-")


@pytest.mark.parametrize("objective", ["replay", "distill", "ilora"])
def test_sam_with_rho_zero_on_an_objective_is_the_objective(objective, tmp_path):
    """SAM's two passes read the same augmented micro-batches: replay rows are drawn once."""
    settings = {"buffer_size": 8, "ema": 0.5, "rho": 0.0}
    results, cursors = [], []
    for i, name in enumerate([["sam", objective], objective]):
        spec = tiny_run({"name": name, **settings}, max_steps=2, grad_accum=2)
        method, model, blocks = setup(spec)
        start = method.cursor
        build_trainer(spec, method, model, blocks, tmp_path / str(i)).train()
        results.append(trainable(model))
        cursors.append(method.cursor - start)
    assert cursors == [4, 4]  # 2 updates x 2 micro-batches x 1 replay row, in both
    for name, t in results[1].items():
        torch.testing.assert_close(results[0][name], t, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow  # inductor compiles the tiny model's layers on a CPU: about 2 minutes
def test_compiled_ilora_on_mixed_ranks_matches_eager(tmp_path):
    """The slow adapter is padded and unpadded with the fast one (it used to be cloned unpadded)."""
    tables = {}
    for mode in (False, True):
        raw = {**TINY, "train": {**TINY["train"], "max_steps": 3, "compile": mode}, "probe": {"every": 2},
               "method": {"name": "ilora", "ema": 0.9, "buffer_size": 8}, "grid": {"lora.rank": [1, 2]}}
        outcomes = run_sweep(SweepSpec.from_dict(raw), tmp_path / str(mode), progress=False)
        assert [o["status"] for o in outcomes] == ["complete", "complete"], outcomes
        tables[mode] = load_runs(tmp_path / str(mode)).sort_values(["run_id", "step"]).reset_index(drop=True)
    eager, compiled = tables[False], tables[True]
    assert list(eager.run_id) == list(compiled.run_id) and (eager.trainable_params == compiled.trainable_params).all()
    for col in ("ft_loss", "forget_loss", "ref_loss", "ft_train_loss"):
        np.testing.assert_allclose(compiled[col], eager[col], rtol=2e-4, atol=2e-5, err_msg=col)


# --------------------------------------------------------------------------- registry and spec


def test_registry_and_columns():
    assert method_names() == ["distill", "ilora", "lora", "replay", "sam"]
    sam = make_method(tiny_run({"name": "sam", "rho": 0.1, "ema": 0.9}))
    assert sam.extra_columns() == {"sam_rho": 0.1, "sam_adaptive": False, "sam_eta": 0.01}
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
    ({"name": "ewc"}, r"method.name = 'ewc' is not a registered method; methods: distill, ilora, lora, replay, sam"),
    ({"name": "sam", "rhoo": 1}, r"unknown field method.rhoo; fields of \[method\]: name, replay, replay_ratio, .*rho"),
    ({"name": "sam", "rho": -0.1}, r"method.rho = -0.1, must be >= 0"),
    ({"name": "sam", "adaptive": "yes"}, r"method.adaptive = 'yes' has type str, expected bool"),
    ({"name": "ilora", "ema": 1.5}, r"method.ema = 1.5, must be in \[0, 1\]"),
    ({"name": "ilora", "eval_adapter": "mean"}, r"method.eval_adapter = 'mean'; allowed values: 'slow', 'fast'"),
    ({"name": "ilora", "buffer_size": 0}, r"method.buffer_size = 0, must be > 0"),
    ({"name": "replay", "replay_ratio": 1.0}, r"method.replay_ratio = 1.0, must be in \(0, 1\)"),
    ({"name": "replay", "replay_ratio": 0.1}, r"method.replay_ratio = 0.1 gives 0.2 replay blocks in a micro-batch of "
                                               r"train.batch_size = 2; .* must be k / 2 with 1 <= k < 2 \(0.5\)"),
    ({"name": "distill", "distill_target": "logits"},
     r"method.distill_target = 'logits'; allowed values: 'argmax', 'kl'"),
    ({"name": "sam", "eta": -1}, r"method.eta = -1.0, must be >= 0"),
    ({"name": "ilora", "consistency_target": "mean"}, r"method.consistency_target = 'mean'; allowed values"),
    ({"name": "replay", "replay": "python-docs"}, r"method.replay = 'python-docs' is also data.reference, the corpus "
                                                 r"the forgetting probes read: .* or set method.allow_replay_overlap"),
    ({"name": "ilora", "replay": "lee-news"}, r"method.replay = 'lee-news' is also data.dataset, the fine-tuning"),
    ({"name": ["sam", "sam"]}, r"method.name = \['sam', 'sam'\] names a method twice"),
    ({"name": ["replay", "ilora"]}, r"method.name = \['replay', 'ilora'\] does not compose: .* two of them do not "
                                    r"compose"),
    ({"name": ["sam", "lora"]}, r"method.name = \['sam', 'lora'\] is sam on plain LoRA: write method.name = 'sam'"),
    ({"name": ["sam", "ewc"]}, r"method.name = 'ewc' is not a registered method"),
    ({"name": 3}, r"method.name = 3; give a method name such as 'replay'"),
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
    arms = {(r.method.name, getattr(r.method.config, "rho", None), getattr(r.method.config, "ema", None)) for r in runs}
    assert {name for name, _, _ in arms} == {"lora", "sam", "replay", "distill", "ilora", "sam+replay"}
    assert len(arms) == 9 and len(runs) == 9 * 2 * 3  # 9 arms x 2 ranks x 3 seeds
    assert {r.train.seed for r in runs} == {0, 1, 2} and {r.lora.rank for r in runs} == {1, 16}
    assert spec.base.model.name == "smollm2-135m" and spec.base.data.dataset == "lee-news"
    assert spec.base.data.reference == "python-docs"
    assert {r.method.config.replay for r in runs if hasattr(r.method.config, "replay")} == {"wiki-sample"}


def test_continual_spec_replays_a_corpus_outside_the_sequence():
    from conftest import REPO

    from forgetting_laws.measure.continual import load_continual_spec

    for seq in load_continual_spec(REPO / "forgetting_laws" / "specs" / "continual.toml").sequences():
        replay = getattr(seq.spec.method.config, "replay", None)
        assert replay in (None, "wiki-sample") and replay not in seq.tasks


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
