"""Analytic GPU cost and the dry-runs of the GPU specs (no model is loaded, nothing downloaded)."""

import re

import pytest

from forgetting_laws.cli import main
from forgetting_laws.measure.spec import ConfigError, SweepSpec, load_spec
from forgetting_laws.measure.estimate import KNOWN_SHAPES, ModelShape, gpu_hours, lora_params, memory_gb, model_shape, run_flops
from conftest import REPO

GPU_SPECS = ["paper-llama2-7b-openorca", "paper-llama2-7b-news", "gpu-qwen2.5-1.5b-news"]
LLAMA2 = KNOWN_SHAPES["meta-llama/Llama-2-7b-chat-hf"]


def test_shape_counts_match_the_published_models():
    assert LLAMA2.n_params == pytest.approx(6.74e9, rel=0.01)  # Llama-2-7B
    assert KNOWN_SHAPES["Qwen/Qwen2.5-1.5B-Instruct"].n_params == pytest.approx(1.54e9, rel=0.01)
    # the paper's P: about 2.5M LoRA parameters per unit of rank on all 7 linear modules
    assert lora_params(LLAMA2, 8) == pytest.approx(20e6, rel=0.01)
    assert lora_params(LLAMA2, 256) == 32 * lora_params(LLAMA2, 8)
    assert lora_params(LLAMA2, 8, ["q_proj", "v_proj"]) == 8 * 32 * (2 * 4096 + 2 * 4096)


def test_shape_from_a_local_config_beats_the_table(tmp_path):
    cfg = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "vocab_size": 257,
           "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(__import__("json").dumps(cfg))
    assert model_shape(str(tmp_path)) == ModelShape(2, 64, 128, 257, 4, 2, tied=True)
    with pytest.raises(ConfigError, match=r"model.name = 'nobody/unknown-7b': its size is not known offline"):
        model_shape("nobody/unknown-7b")


def test_flops_follow_the_frozen_base_accounting():
    run = load_spec(REPO / "forgetting_laws" / "specs" / "paper-llama2-7b-openorca.toml").expand()[0]
    tokens = 260 * 32 * 512
    # with checkpointing an update costs about 6 N per token (forward, activation backward,
    # recomputed forward), plus attention and LoRA; probes add the rest
    per_token = run_flops(run, LLAMA2) / tokens
    assert 6 * LLAMA2.matmul_params < per_token < 9 * LLAMA2.matmul_params
    raw = load_spec(REPO / "forgetting_laws" / "specs" / "paper-llama2-7b-openorca.toml").to_dict()
    raw["train"]["gradient_checkpointing"] = False
    plain = SweepSpec.from_dict(raw).expand()[0]
    assert run_flops(plain, LLAMA2) < run_flops(run, LLAMA2)
    assert memory_gb(plain, LLAMA2) > memory_gb(run, LLAMA2)
    assert gpu_hours(3.6e15 * 0.5, "a100", 0.5) == pytest.approx(3.6e15 * 0.5 / (312e12 * 0.5) / 3600)
    with pytest.raises(ConfigError, match=r"gpu = 'tpu' is not known; use one of a100"):
        gpu_hours(1.0, "tpu", 0.4)


def test_a_7b_model_at_batch_32_x_512_fits_one_80gb_gpu_only_with_the_knobs():
    raw = load_spec(REPO / "forgetting_laws" / "specs" / "paper-llama2-7b-openorca.toml").to_dict()
    raw["grid"] = {"lora.rank": [256]}
    assert memory_gb(SweepSpec.from_dict(raw).expand()[0], LLAMA2) < 80
    raw["train"].update(batch_size=32, grad_accum=1, gradient_checkpointing=False)
    assert memory_gb(SweepSpec.from_dict(raw).expand()[0], LLAMA2) > 80  # one micro-batch, no recompute


@pytest.mark.parametrize("name", GPU_SPECS)
def test_gpu_spec_dry_run_works_offline_and_prints_gpu_hours(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any download attempt would fail
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    path = REPO / "forgetting_laws" / "specs" / f"{name}.toml"
    assert main(["sweep", str(path), "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"sweep '{name}': 6 runs, 6 to do" in out
    assert "32 blocks x 512 tokens" in out
    hours = float(re.search(r"estimated GPU-hours of the runs to do: ([\d.]+) on a100", out)[1])
    assert 0.1 < hours < 10
    assert re.search(r"peak memory per device about \d+ GB of the a100's 80 GB: fits", out)
    spec = load_spec(path)
    assert sorted(r.lora.rank for r in spec.expand()) == [8, 16, 32, 64, 128, 256]
    b = spec.base
    assert (b.train.max_steps, b.data.seq_len, b.train.batch_size * b.train.grad_accum) == (260, 512, 32)
    assert (b.train.optimizer, b.lora.rslora, b.lora.target_modules) == ("adafactor", True, "all-linear")
    assert b.data.reference == "hf:Salesforce/wikitext:wikitext-103-raw-v1:test"
    assert not list(tmp_path.iterdir())


def test_paper_specs_name_llama2_chat():
    for name in GPU_SPECS[:2]:
        assert load_spec(REPO / "forgetting_laws" / "specs" / f"{name}.toml").base.model.name == "meta-llama/Llama-2-7b-chat-hf"


def test_dry_run_checks_the_batch_splits_over_the_gpus(tmp_path, capsys):
    path = str(REPO / "forgetting_laws" / "specs" / "paper-llama2-7b-openorca.toml")
    assert main(["sweep", path, "--out", str(tmp_path), "--dry-run", "--world-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "world size 4: 1 micro-batch of 8 per device" in out and "wall time" in out
    assert main(["sweep", path, "--out", str(tmp_path), "--dry-run", "--world-size", "3"]) == 2
    assert "train.grad_accum = 4 does not split over 3 devices" in capsys.readouterr().err


def test_dry_run_checks_corpus_names_without_loading_them(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text((REPO / "forgetting_laws" / "specs" / "paper-llama2-7b-news.toml").read_text().replace(
        "hf:Salesforce/wikitext:wikitext-103-raw-v1:test", "hf:wikitext"))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "runs"), "--dry-run"]) == 2
    assert "corpus 'hf:wikitext': expected 'hf:<dataset>[:<config>]:<split>" in capsys.readouterr().err
