import copy
import json

import pandas as pd
import pytest
import torch

from forgetting_laws.measure.compiling import compiled, pad_lora, pad_ranks, unpad_lora, wants_compile
from forgetting_laws.measure.spec import ConfigError, SweepSpec, load_spec
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


def test_auto_compiles_on_cuda_only_and_a_sweep_pads_to_its_largest_rank():
    assert wants_compile(True, "cpu") and not wants_compile(False, "cuda")
    assert wants_compile("auto", "cuda") and not wants_compile("auto", "cpu")
    runs = _spec(compile=True).expand()
    assert pad_ranks(runs) == {r.run_id: 4 for r in runs}
    assert pad_ranks(_spec(compile=False).expand()) == {}
    assert pad_ranks(_spec().expand()) == {}  # "auto" on this CPU


def test_compile_field_is_checked():
    with pytest.raises(ConfigError, match=r"train.compile = 'yes' has type str, expected bool or 'auto'"):
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
        meta = [json.loads(p.read_text()) for p in (tmp_path / mode).glob("_meta/*.json")]
        assert {m["compiled"] for m in meta} == {mode == "true"}
    # shared by both ranks: the layer in training (the first layer's input needs no grad, the
    # others' does: two graphs) and under no_grad (the probes), and the loss
    assert 0 < graphs <= 4
    assert {m["pad_rank"] for m in meta} == {4}  # both ranks on the graph of the largest
    eager, compiled = tables["false"], tables["true"]
    assert list(eager["run_id"]) == list(compiled["run_id"])
    assert (eager["trainable_params"] == compiled["trainable_params"]).all()  # the true rank's P
    for col in ("ft_loss", "forget_loss", "ref_loss", "ft_train_loss"):
        pd.testing.assert_series_equal(eager[col], compiled[col], rtol=2e-4, atol=2e-5, check_names=False)


@pytest.mark.slow  # compiles several groups on a CPU: minutes
def test_each_group_of_a_sweep_gets_its_own_compiled_graphs():
    """Groups compiled one after another in a process must not run into dynamo's recompile limit."""
    from torch._dynamo.utils import counters

    base, _ = load_model("tiny-random-llama")
    ids = torch.randint(0, 200, (2, 16))
    before = counters["stats"]["unique_graphs"]
    for pad in (2, 3, 5, 6):  # four groups: 3 layer graphs each, and the loss's
        model = lora_model(copy.deepcopy(base), _spec().expand()[0])
        with compiled(model, pad):
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
    graphs = []
    with compiled(model, 1):
        for batch in (3, 2, 5):
            ids = torch.randint(0, 200, (batch, 16), generator=torch.Generator().manual_seed(batch))
            before = counters["stats"]["unique_graphs"]
            with torch.no_grad():
                model(input_ids=ids)
            graphs.append(counters["stats"]["unique_graphs"] - before)
    assert graphs[2] == graphs[0] > 0  # the third size is compiled like the first, not reused
