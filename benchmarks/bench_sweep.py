"""Sweep-engine benchmarks on the embedded default (SmolLM2-135M, LoRA rank 8, batch 4 x 128).

Prints ratios measured in this one run:
1. training tokens/s of the toolkit's Trainer run against a minimal hand-written torch + peft loop
   (same model, batch and LoRA config), and the achieved FLOP/s against this machine's fp32
   matmul peak;
2. the probe against the naive probe that recomputes the base model's predictions each time;
3. the second (cached safetensors) load of ``smollm2-135m`` against the first (GGUF) load.

Usage: python benchmarks/bench_sweep.py [--steps 6] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Callable

import torch


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """Measured fp32 matmul FLOP/s of this machine (best of ``reps``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_load(model_name: str) -> None:
    from forgetting_laws.measure.models import load_model

    with tempfile.TemporaryDirectory() as cache:
        os.environ["FORGETTING_LAWS_CACHE"] = cache
        first = _timed(lambda: load_model(model_name))
        second = min(_timed(lambda: load_model(model_name)) for _ in range(3))
    print(f"load   first (GGUF, dequantise + cache) {first:7.2f} s | second (safetensors cache) "
          f"{second:6.2f} s | ratio {first / second:6.1f}x faster")


def hand_loop_step(model, blocks: torch.Tensor, lr: float) -> Callable[[int], None]:
    """One plain AdamW step on batch ``i`` of ``blocks``: the eager baseline the benchmarks name."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)

    def step(i: int) -> None:
        ids = blocks[i % len(blocks)]
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def hand_loop(model, blocks: torch.Tensor, steps: int, lr: float) -> float:
    """Seconds for ``steps`` plain AdamW steps (after one warm-up step)."""
    step = hand_loop_step(model, blocks, lr)
    step(0)
    return _timed(lambda: [step(i) for i in range(1, steps + 1)])


def trainer_loop(model, train: "np.ndarray", spec, steps: int) -> float:
    """Seconds for ``steps`` steps of the toolkit's Trainer (warm-up step excluded)."""
    from transformers import TrainerCallback

    from forgetting_laws.measure.methods import make_method
    from forgetting_laws.measure.setup import resolve_device
    from forgetting_laws.measure.train import build_trainer

    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks[state.global_step] = time.perf_counter()

    spec.train.max_steps = steps + 1
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(spec, make_method(spec), model, train, out, [Clock()], *resolve_device(spec))
        trainer.train()
    return marks[steps + 1] - marks[1]


def bench_training(model_name: str, steps: int) -> None:
    from forgetting_laws.measure.methods.lora import lora_model
    from forgetting_laws.measure.models import load_model
    from forgetting_laws.measure.setup import prepare_run
    from forgetting_laws.measure.spec import SweepSpec

    spec = SweepSpec.from_dict({"model": {"name": model_name}, "lora": {"rank": 8}}).base
    ctx = prepare_run(spec)
    base, train = ctx.model, ctx.data.train
    batch = spec.train.batch_size
    blocks = torch.from_numpy(train[: batch * (steps + 1)]).view(-1, batch, spec.data.seq_len)
    hand = hand_loop(lora_model(load_model(model_name)[0], spec), blocks, steps, spec.train.lr)
    ours = trainer_loop(lora_model(base, spec), train, spec, steps)
    tokens = steps * batch * spec.data.seq_len
    # Model FLOPs: forward 2*P*T, backward through activations 2*P*T (frozen weights get no
    # weight gradient); LoRA's own matmuls are under 1% at rank 8 and left out.
    n_params = sum(p.numel() for n, p in base.named_parameters() if "embed_tokens" not in n)
    n_params += base.get_output_embeddings().weight.numel()  # tied lm_head still costs a matmul
    flops = 4 * n_params * tokens
    peak = matmul_peak()
    print(f"train  hand loop {tokens / hand:7.0f} tok/s | toolkit Trainer run {tokens / ours:7.0f} tok/s | "
          f"ratio {hand / ours:5.2f}x (goal >= 0.95)")
    print(f"flops  toolkit {flops / ours / 1e9:6.1f} GFLOP/s of a measured fp32 matmul peak "
          f"{peak / 1e9:6.1f} GFLOP/s = {flops / ours / peak:5.1%} utilisation")


def bench_probe(model_name: str) -> None:
    from forgetting_laws.measure.methods.lora import lora_model
    from forgetting_laws.measure.probes import ProbeData, base_targets, forget_probe, lm_loss, probe
    from forgetting_laws.measure.setup import prepare_run
    from forgetting_laws.measure.spec import SweepSpec

    spec = SweepSpec.from_dict({"model": {"name": model_name}}).base
    ctx = prepare_run(spec)
    data, key, ref = ctx.probe_data, ctx.model_key, ctx.probe_data.reference
    peft_model = lora_model(ctx.model, spec).eval()

    def naive_forget():  # what a probe costs without the cache: base predictions every time
        with peft_model.disable_adapter():
            targets = base_targets(peft_model, ref, key, use_cache=False)
        return forget_probe(peft_model, ProbeData(ref, targets, data.heldout))

    def naive_full():
        out = naive_forget()
        out["ft_loss"] = lm_loss(peft_model, data.heldout)
        return out

    forget_probe(peft_model, data)  # warm-up
    cached_f = min(_timed(lambda: forget_probe(peft_model, data)) for _ in range(2))
    naive_f = min(_timed(naive_forget) for _ in range(2))
    cached = min(_timed(lambda: probe(peft_model, data)) for _ in range(2))
    naive = min(_timed(naive_full) for _ in range(2))
    print(f"probe  forgetting probe: cached targets {cached_f:5.2f} s | naive {naive_f:5.2f} s | "
          f"ratio {naive_f / cached_f:4.2f}x faster (goal >= 1.9)")
    print(f"probe  whole probe (+ ft_loss on held-out): cached {cached:5.2f} s | naive {naive:5.2f} s | "
          f"ratio {naive / cached:4.2f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    bench_training(args.model, args.steps)
    bench_probe(args.model)
    bench_load(args.model)


if __name__ == "__main__":
    main()
