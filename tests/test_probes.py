"""Probe correctness against hand-written computations on a tiny random model."""

import pytest
import torch
import torch.nn.functional as F

from forgetting_laws.measure.spec import SweepSpec
from forgetting_laws.measure.probes import ProbeData, base_targets, lm_loss, probe
from forgetting_laws.measure.methods.lora import lora_model
from forgetting_laws.measure.setup import prepare_run


def setup(seq_len=32, n=6):
    spec = SweepSpec.from_dict({"model": {"name": "tiny-random-llama"},
                                "data": {"seq_len": seq_len, "heldout_blocks": n, "reference_blocks": n}}).base
    ctx = prepare_run(spec)
    ref = torch.from_numpy(ctx.data.reference)
    data = ProbeData(ref, base_targets(ctx.model, ref, ctx.model_key, batch_size=4), torch.from_numpy(ctx.data.heldout))
    return spec, ctx.model, data, ctx.model_key


def hand_ce(model, ids, targets):
    """Mean cross-entropy by an explicit loop over blocks and positions."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(ids.shape[0]):
            logits = model(input_ids=ids[b : b + 1]).logits[0]
            for t in range(ids.shape[1] - 1):
                total += -torch.log_softmax(logits[t].double(), -1)[targets[b, t]].item()
                count += 1
    return total / count


def test_base_targets_are_cached_and_equal_recomputed():
    _, model, data, key = setup()
    again = base_targets(model, data.reference, key, use_cache=False)
    assert torch.equal(again, data.targets)
    with torch.no_grad():
        direct = model(input_ids=data.reference).logits[:, :-1].argmax(-1)
    assert torch.equal(direct, data.targets)


def test_step0_forget_loss_is_base_self_cross_entropy():
    spec, model, data, _ = setup()
    expected = hand_ce(model, data.reference, data.targets)
    peft_model = lora_model(model, spec)  # B = 0: the adapter is inert
    m = probe(peft_model, data, batch_size=4)
    assert abs(m["forget_loss"] - expected) < 1e-5
    assert m["agreement"] == 1.0


def test_zero_B_lora_after_changing_A_keeps_base_predictions():
    spec, model, data, _ = setup()
    expected = hand_ce(model, data.reference, data.targets)
    peft_model = lora_model(model, spec)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                p.normal_(0, 10.0)  # A changes, B stays zero: the product BA is still zero
    m = probe(peft_model, data, batch_size=4, kl=True)
    assert abs(m["forget_loss"] - expected) < 1e-5
    assert m["agreement"] == 1.0
    assert abs(m["forget_kl"]) < 1e-6


def test_ft_and_ref_loss_match_hand_loop_after_a_change():
    spec, model, data, _ = setup()
    peft_model = lora_model(model, spec)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    m = probe(peft_model, data, batch_size=4, kl=True)
    assert abs(m["ft_loss"] - hand_ce(peft_model, data.heldout, data.heldout[:, 1:])) < 1e-5
    assert abs(m["ref_loss"] - hand_ce(peft_model, data.reference, data.reference[:, 1:])) < 1e-5
    assert abs(m["forget_loss"] - hand_ce(peft_model, data.reference, data.targets)) < 1e-5
    assert m["agreement"] < 1.0 and m["forget_kl"] > 0
    with torch.no_grad(), peft_model.disable_adapter():
        lp_base = F.log_softmax(peft_model(input_ids=data.reference).logits[:, :-1].double(), -1)
    with torch.no_grad():
        lp_ft = F.log_softmax(peft_model(input_ids=data.reference).logits[:, :-1].double(), -1)
    kl = (lp_base.exp() * (lp_base - lp_ft)).sum(-1).mean().item()
    assert abs(m["forget_kl"] - kl) < 1e-5


def test_lm_loss_equals_model_loss():
    _, model, data, _ = setup()
    with torch.no_grad():
        expected = model(input_ids=data.heldout, labels=data.heldout).loss.item()
    assert abs(lm_loss(model, data.heldout, batch_size=3) - expected) < 1e-5


def test_base_probe_is_cached_and_equals_a_real_probe():
    from forgetting_laws.measure.probes import base_probe

    spec, model, data, _ = setup()
    peft_model = lora_model(model, spec)
    direct = probe(peft_model, data, batch_size=4)
    first = base_probe(peft_model, data, batch_size=4)
    second = base_probe(peft_model, data, batch_size=4)  # from the cache
    for k in ("forget_loss", "ref_loss", "agreement", "ft_loss"):
        assert first[k] == pytest.approx(direct[k], abs=1e-6) and second[k] == first[k]
