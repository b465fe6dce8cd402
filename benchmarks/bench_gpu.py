"""GPU benchmark: tokens/s and model FLOP utilisation (MFU) of a toolkit run on CUDA.

Compares the toolkit's Trainer run (bf16 autocast, SDPA attention, pinned memory, the spec's
activation checkpointing) with a minimal hand-written torch + peft loop on the same model,
LoRA and batch shape, and prints both against this GPU's measured bf16 matmul peak.
Model FLOPs are counted as in :mod:`forgetting_laws.measure.estimate` (frozen base: forward 2N, activation
backward 2N, attention, LoRA 6P per token).

Without CUDA it prints "skipped: no CUDA" and exits 0 (``make bench`` runs every benchmark).

Usage: python benchmarks/bench_gpu.py [--model smollm2-135m] [--batch 8] [--seq-len 512]
       [--steps 10] [--rank 8] [--checkpointing]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time


def bf16_peak(n: int = 8192, reps: int = 5) -> float:
    """Measured bf16 matmul FLOP/s of this GPU (best of ``reps``)."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    best = min(_cuda_timed(lambda: a @ b) for _ in range(reps + 1))
    return 2 * n**3 / best


def _cuda_timed(fn) -> float:
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def hand_loop(model, blocks, steps: int, lr: float, checkpointing: bool) -> float:
    """Seconds for ``steps`` AdamW steps under bf16 autocast (after one warm-up step)."""
    import torch

    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)

    def step(i: int) -> None:
        ids = blocks[i % len(blocks)].cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)
    return _cuda_timed(lambda: [step(i) for i in range(1, steps + 1)])


def trainer_loop(model, train, spec, steps: int) -> float:
    """Seconds for ``steps`` steps of the toolkit's Trainer (warm-up step excluded)."""
    import torch
    from transformers import TrainerCallback

    from forgetting_laws.measure.methods import make_method
    from forgetting_laws.measure.setup import resolve_device
    from forgetting_laws.measure.train import build_trainer

    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            marks[state.global_step] = time.perf_counter()

    spec.train.max_steps = steps + 1
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(spec, make_method(spec), model, train, out, [Clock()], *resolve_device(spec))
        trainer.train()
    return marks[steps + 1] - marks[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="alias, local dir or hub id")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing in both loops")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA (this benchmark measures the GPU path)")
        return 0

    from forgetting_laws.measure.estimate import shape_from_config, step_flops
    from forgetting_laws.measure.methods.lora import lora_model
    from forgetting_laws.measure.models import load_model
    from forgetting_laws.measure.setup import load_base, load_data, resolve_device
    from forgetting_laws.measure.spec import SweepSpec

    spec = SweepSpec.from_dict({
        "model": {"name": args.model}, "lora": {"rank": args.rank},
        "data": {"seq_len": args.seq_len, "heldout_blocks": 1, "reference_blocks": 1},
        "train": {"batch_size": args.batch, "gradient_checkpointing": args.checkpointing},
    }).base
    device, dtype = resolve_device(spec)
    base, tok, key = load_base(spec, dtype)
    train = load_data(spec, tok, key)[0].train
    need = args.batch * (args.steps + 1)
    if len(train) < need:
        print(f"corpus too small: {len(train)} blocks of {args.seq_len}, need {need}; lower --steps or --batch")
        return 1
    blocks = torch.from_numpy(train[:need]).view(-1, args.batch, args.seq_len).pin_memory()
    hand = hand_loop(lora_model(load_model(args.model, dtype)[0], spec).to(device), blocks, args.steps,
                     spec.train.lr, args.checkpointing)
    torch.cuda.empty_cache()
    ours = trainer_loop(lora_model(base, spec).to(device), train, spec, args.steps)

    tokens = args.steps * args.batch * args.seq_len
    flops = args.steps * step_flops(spec, shape_from_config(base.config.to_dict()))
    peak = bf16_peak()
    name = torch.cuda.get_device_name()
    print(f"gpu    {name}: measured bf16 matmul peak {peak / 1e12:6.1f} TFLOP/s")
    print(f"train  {args.model}, LoRA r{args.rank}, batch {args.batch} x {args.seq_len}"
          f"{', activation checkpointing' if args.checkpointing else ''}")
    for label, secs in (("hand loop", hand), ("toolkit Trainer run", ours)):
        print(f"       {label:<20} {tokens / secs:9.0f} tok/s  {flops / secs / 1e12:6.1f} TFLOP/s  "
              f"MFU {flops / secs / peak:5.1%}")
    print(f"ratio  toolkit / hand loop throughput {hand / ours:5.2f}x (goal >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
