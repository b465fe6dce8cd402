import copy
import json

import pandas as pd
import pytest
import torch

from forgetting_laws.measure.compiling import (CompilePlan, CostBook, group_key, pad_lora, plan_compile,
                                      prepare_for_compile, unpad_lora)
from forgetting_laws.measure.config import ConfigError, SweepSpec, load_spec
from forgetting_laws.measure.methods.lora import lora_model
from forgetting_laws.measure.models import load_model
from forgetting_laws.store import load_runs
from forgetting_laws.measure.sweep import run_sweep


def _spec(**train):
    return SweepSpec.from_dict({"model": {"name": "tiny-random-llama"}, "train": train,
                                "grid": {"lora.rank": [1, 4, 2]}})


def _train(model, ids, steps=5):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 0.5)
        opt.step()
        opt.zero_grad()


def test_padding_is_inert_through_training():
    base, _ = load_model("tiny-random-llama")
    run = _spec().expand()[1]  # rank 4
    ids = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
    plain, padded = lora_model(copy.deepcopy(base), run), lora_model(copy.deepcopy(base), run)
    ranks = pad_lora(padded, 16)
    assert set(ranks.values()) == {4}
    for m in (plain, padded):  # a non-zero B, so the padding is tested where it could leak
        _train(m, ids)
    a_pad = [p for n, p in padded.named_parameters() if "lora_A" in n]
    b_pad = [p for n, p in padded.named_parameters() if "lora_B" in n]
    assert all(a.shape[0] == 16 and not a[4:].any() for a in a_pad)  # exactly zero, not small
    assert all(b.shape[1] == 16 and not b[:, 4:].any() for b in b_pad)
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, padded(input_ids=ids).logits, atol=1e-5)
    unpad_lora(padded, ranks)
    for (n, p), (_, q) in zip(plain.named_parameters(), padded.named_parameters()):
        assert p.shape == q.shape and torch.allclose(p, q, atol=1e-5), n


def test_plan_groups_runs_and_pads_to_the_largest_rank():
    plans = plan_compile(_spec(compile=True).expand(), CostBook())
    assert {p.compile for p in plans.values()} == {True}
    assert {p.pad_rank for p in plans.values()} == {4}
    assert len({p.key for p in plans.values()}) == 1
    off = plan_compile(_spec(compile=False).expand(), CostBook())
    assert not any(p.compile or p.pad_rank for p in off.values())


def test_auto_compiles_when_the_steps_repay_the_compilation():
    runs = _spec(compile="auto", max_steps=100).expand()
    key = group_key(runs[0], 4)
    book = CostBook(eager={group_key(runs[0], 0): {"1": 1.0, "4": 1.0}}, compiled={key: 0.6}, cold={key: 50.0})
    assert all(p.compile for p in plan_compile(runs, book).values())  # 300 steps x 0.4 s > 50 s
    book.cold[key] = book.cold[group_key(runs[0], 0)] = 200.0  # compiling costs 200 s here
    plans = plan_compile(runs, book)
    assert not any(p.compile for p in plans.values())  # 120 s saved < 200 s, smaller pads too
    assert "predicted saving" in next(iter(plans.values())).reason
    short = _spec(compile="auto", max_steps=20).expand()
    assert not any(p.compile for p in plan_compile(short, CostBook(eager=book.eager)).values())


def test_auto_splits_the_ranks_where_padding_costs_more_than_a_compilation():
    spec = SweepSpec.from_dict({"model": {"name": "tiny-random-llama"},
                                "train": {"compile": "auto", "max_steps": 200},
                                "grid": {"lora.rank": [64, 1, 2]}})
    runs = spec.expand()
    family = group_key(runs[0], 0)
    book = CostBook(eager={family: {"1": 1.0, "64": 3.0}}, cold={family: 10.0})
    plans = {r.lora.rank: plan_compile(runs, book)[r.run_id] for r in runs}
    # padding ranks 1 and 2 to 64 would triple their steps; two compilations cost 20 s
    assert all(p.compile for p in plans.values())
    assert (plans[1].pad_rank, plans[2].pad_rank, plans[64].pad_rank) == (2, 2, 64)
    assert plans[1].key == plans[2].key != plans[64].key
    assert "ranks [1, 2] compiled together, padded to 2" in plans[1].reason
    forced = SweepSpec.from_dict({**spec.to_dict(), "train": {"compile": True, "max_steps": 200}})
    assert {p.pad_rank for p in plan_compile(forced.expand(), book).values()} == {64}


def test_auto_runs_eagerly_until_an_eager_step_is_measured_and_a_held_graph_is_free():
    runs = _spec(compile="auto", max_steps=100).expand()
    plans = plan_compile(runs, CostBook())
    assert not any(p.compile for p in plans.values())
    assert all("this run does" in p.reason for p in plans.values())
    # measured: eager 1 s, compiled 0.9 s, but compiling costs 60 s: not worth it for 300 steps
    key = group_key(runs[0], 4)
    book = CostBook(eager={group_key(runs[0], 0): {"1": 1.0, "4": 1.0}}, compiled={key: 0.9},
                    cold={key: 60.0, group_key(runs[0], 0): 60.0})
    assert not any(p.compile for p in plan_compile(runs, book).values())
    from forgetting_laws.measure import compiling
    compiling._COMPILED_HERE.add(key)  # ... unless this process already holds the graph
    try:
        assert all(p.compile and p.key == key for p in plan_compile(runs, book).values())
    finally:
        compiling._COMPILED_HERE.discard(key)


def test_step_times_beyond_the_measured_ranks_grow_with_the_flops():
    f = "family"
    book = CostBook(eager={f: {"1": 3.0}}, per_rank={f: 0.0023})
    # one measured rank: the FLOPs' slope, 3.0 * 0.0023 / 1.0023 s per rank
    assert book.eager_at(f, 64) == pytest.approx(3.0 + 63 * 3.0 * 0.0023 / 1.0023)
    assert book.eager_at(f, 1) == 3.0
    assert CostBook(eager={f: {"1": 3.0}}).eager_at(f, 64) == 3.0  # no FLOP count: flat, as before
    book.eager[f]["16"] = 3.3  # two measured ranks: the steeper of the measured and FLOP slopes
    assert book.eager_at(f, 64) == pytest.approx(3.3 + 48 * 0.3 / 15)
    assert book.eager_at(f, 8) == pytest.approx(3.0 + 7 * 0.3 / 15)  # between: interpolated
    # a compiled step at a pad never measured is scaled from the family's measured pad
    book.compiled_at[f] = {"64": 3.03}
    assert book.compiled_step(f, "key-16", 16) == pytest.approx(3.03 - 48 * 3.03 * 0.0023 / (1 + 0.0023 * 64))
    book.compiled["key-16"] = 2.95
    assert book.compiled_step(f, "key-16", 16) == 2.95
    assert CostBook().compiled_step(f, "key-16", 16) is None


def test_auto_compiles_a_large_rank_that_one_measured_small_rank_would_have_hidden():
    """Measured in a real 4-rank sweep: eager 3.00 s at rank 1; after rank 4 ran compiled,
    padded to 64, at 3.03 s a step. With the old flat extrapolation rank 64 looked as cheap
    eagerly (3.00 s) and ran eager at 3.90 s; the FLOPs say it costs more, so the held graph wins.
    """
    from forgetting_laws.measure import compiling

    run = SweepSpec.from_dict({"model": {"name": "tiny-random-llama"}, "train": {"compile": "auto", "max_steps": 60},
                               "lora": {"rank": 64}}).expand()[0]
    family, key = group_key(run, 0), group_key(run, 64)
    book = CostBook(eager={family: {"1": 3.0}}, compiled={key: 3.03}, compiled_at={family: {"64": 3.03}},
                    cold={key: 31.4, family: 31.4}, per_rank={family: 0.0023})
    compiling._COMPILED_HERE.add(key)
    try:
        plan = plan_compile([run], book)[run.run_id]
        assert plan.compile and plan.pad_rank == 64, plan.reason
        book.per_rank.clear()
        assert not plan_compile([run], book)[run.run_id].compile  # flat: -1%, under the margin
    finally:
        compiling._COMPILED_HERE.discard(key)


def test_compile_field_is_checked():
    with pytest.raises(ConfigError, match=r"train.compile = 'yes'; use true, false or \"auto\""):
        _spec(compile="yes")
    assert _spec(compile=False).expand()[0].run_id == _spec(compile=True).expand()[0].run_id


@pytest.mark.slow
def test_compiled_sweep_equals_eager_sweep_and_compiles_once(tiny_spec_file, tmp_path):
    from torch._dynamo.utils import counters

    tables = {}
    for mode in ("false", "true"):
        spec = load_spec(tiny_spec_file(max_steps=6, ranks=[1, 4], extra=""))
        spec = SweepSpec.from_dict({**spec.to_dict(), "train": {**spec.to_dict()["train"], "compile": mode == "true"}})
        before = counters["stats"]["unique_graphs"]
        run_sweep(spec, tmp_path / mode, progress=False)
        graphs = counters["stats"]["unique_graphs"] - before
        tables[mode] = load_runs(tmp_path / mode).sort_values(["run_id", "step"]).reset_index(drop=True)
        meta = [json.loads(p.read_text()) for p in (tmp_path / mode).glob("*.json")]
        assert {m["compiled"] for m in meta} == {mode == "true"}
    # shared by both ranks: the layer in training (the first layer's input needs no grad, the
    # others' does: two graphs) and under no_grad (the probes), and the loss
    assert 0 < graphs <= 4
    book, family = CostBook.load(), group_key(spec.expand()[0], 0)  # what the runs recorded
    assert set(book.eager[family]) >= {"1", "4"} and set(book.compiled_at[family]) >= {"4"}
    lora = lora_model(load_model("tiny-random-llama")[0], spec.expand()[0])  # rank 1
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in lora.parameters() if not p.requires_grad)
    assert book.per_rank[family] == pytest.approx(trainable / frozen)
    eager, compiled = tables["false"], tables["true"]
    assert list(eager["run_id"]) == list(compiled["run_id"])
    assert (eager["trainable_params"] == compiled["trainable_params"]).all()  # the true rank's P
    for col in ("ft_loss", "forget_loss", "ref_loss", "ft_train_loss"):
        pd.testing.assert_series_equal(eager[col], compiled[col], rtol=2e-4, atol=2e-5, check_names=False)


def test_each_group_of_a_sweep_gets_its_own_compiled_graphs():
    """Groups compiled one after another in a process must not run into dynamo's recompile limit."""
    from torch._dynamo.utils import counters

    base, _ = load_model("tiny-random-llama")
    ids = torch.randint(0, 200, (2, 16))
    before = counters["stats"]["unique_graphs"]
    for pad in (2, 3, 5, 6):  # four groups: 3 layer graphs each, and the loss's
        model = lora_model(copy.deepcopy(base), _spec().expand()[0])
        prepare_for_compile(model, CompilePlan(True, pad_rank=pad, probes=True, key=f"g{pad}"))
        model(input_ids=ids, labels=ids).loss.backward()
        with torch.no_grad():
            model(input_ids=ids)
    assert counters["stats"]["unique_graphs"] - before >= 4 * 3


def test_compiled_layers_keep_static_shapes_whatever_batch_comes_first():
    """A probe batch before the training batch must not turn the training graph dynamic.

    With dynamo's automatic dynamic shapes the second batch size seen would get a symbolic
    batch (a slower graph, and one whose cache key depends on the order, so a repeated sweep
    missed inductor's disk cache). Static graphs specialise on each size: a third size compiles
    a third graph instead of reusing a symbolic one.
    """
    from torch._dynamo.utils import counters

    base, _ = load_model("tiny-random-llama")
    model = lora_model(copy.deepcopy(base), _spec().expand()[0])
    prepare_for_compile(model, CompilePlan(True, pad_rank=None, probes=True, key="static"))
    graphs = []
    for batch in (3, 2, 5):
        ids = torch.randint(0, 200, (batch, 16), generator=torch.Generator().manual_seed(batch))
        before = counters["stats"]["unique_graphs"]
        with torch.no_grad():
            model(input_ids=ids)
        graphs.append(counters["stats"]["unique_graphs"] - before)
    assert graphs[2] == graphs[0] > 0  # the third size is compiled like the first, not reused
