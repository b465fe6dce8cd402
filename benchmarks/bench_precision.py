"""bfloat16 against float32 on this CPU, on the embedded default (SmolLM2-135M, LoRA rank 8, 4 x 128).

Prints the CPU's bfloat16 flags beside the ratios measured in this one run, each side interleaved
with the other:
1. ``step``: a training step (frozen base in bfloat16 under autocast, LoRA and AdamW in float32)
   against the float32 step;
2. ``probe``: a probe (8 reference blocks, no grad) in bfloat16 autocast against float32;
3. ``sweep``: a small sweep (2 ranks x a few steps, probes included) with ``model.dtype =
   "bfloat16"`` against ``"float32"``, in turns run by run; skipped where the step part shows
   bfloat16 emulated (over 3x slower: a CPU without ``amx_bf16`` / ``avx512_bf16``).

Usage: python benchmarks/bench_precision.py [--parts step probe sweep] [--steps 4] [--sweep-steps 6]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

SLOW = 3.0  # bfloat16 this much slower than float32: emulated, the sweep part is skipped


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cpu_line() -> str:
    from forgetting_laws.measure.precision import BF16_FLAGS, _cpu_name, cpu_bf16_flags

    flags = cpu_bf16_flags()
    return (f"cpu    {_cpu_name()}; bfloat16 matrix flags: {', '.join(flags) or 'none'} (of {', '.join(BF16_FLAGS)}); "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def _contexts(model_name: str):
    from forgetting_laws.measure.setup import prepare_run
    from forgetting_laws.measure.spec import SweepSpec

    out = {}
    for dtype in ("float32", "bfloat16"):
        spec = SweepSpec.from_dict({"model": {"name": model_name, "dtype": dtype, "device": "cpu"},
                                    "lora": {"rank": 8}}).expand()[0]
        out[dtype] = (spec, prepare_run(spec))
    return out


def _step_fn(spec, ctx, blocks):
    """One AdamW step of LoRA on ``blocks[i]``; bfloat16 autocast when the base is bfloat16."""
    from forgetting_laws.measure.methods.lora import lora_model

    model = lora_model(copy.deepcopy(ctx.model), spec)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.train.lr)
    autocast = spec.model.dtype == "bfloat16"

    def step(i: int) -> None:
        ids = blocks[i % len(blocks)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_step(ctxs, steps: int) -> float:
    spec, ctx = ctxs["float32"]
    batch = spec.train.batch_size
    blocks = torch.from_numpy(ctx.data.train[: batch * (steps + 1)]).view(-1, batch, spec.data.seq_len)
    fns = {k: _step_fn(s, c, blocks) for k, (s, c) in ctxs.items()}
    for fn in fns.values():
        fn(0)  # warm-up
    times = {k: [] for k in fns}
    for i in range(1, steps + 1):  # interleaved: the two see the machine at the same minutes
        for k, fn in fns.items():
            times[k].append(_timed(lambda: fn(i)))
    fp32, bf16 = (statistics.median(times[k]) for k in ("float32", "bfloat16"))
    pairs = sorted(a / b for a, b in zip(times["float32"], times["bfloat16"]))
    print(f"step   float32 {fp32:6.2f} s | bfloat16 {bf16:6.2f} s | ratio {fp32 / bf16:5.2f}x "
          f"({len(pairs)} interleaved pairs {pairs[0]:4.2f}x to {pairs[-1]:4.2f}x)")
    return fp32 / bf16


def bench_probe(ctxs, reps: int) -> None:
    from forgetting_laws.measure.methods.lora import lora_model
    from forgetting_laws.measure.precision import probing
    from forgetting_laws.measure.probes import forget_probe

    times = {k: [] for k in ctxs}
    models = {k: lora_model(copy.deepcopy(c.model), s).eval() for k, (s, c) in ctxs.items()}
    data = {k: c.probe_data for k, (_, c) in ctxs.items()}
    for _ in range(reps):
        for k, model in models.items():
            with probing(model, "run"):
                times[k].append(_timed(lambda: forget_probe(model, data[k], batch_size=8)))
    fp32, bf16 = (min(times[k]) for k in ("float32", "bfloat16"))
    print(f"probe  float32 {fp32:6.2f} s | bfloat16 autocast {bf16:6.2f} s | ratio {fp32 / bf16:5.2f}x "
          f"({len(data['float32'].reference)} reference blocks, best of {reps})")


def bench_sweep(model_name: str, steps: int) -> None:
    from forgetting_laws.measure.spec import SweepSpec
    from forgetting_laws.measure.sweep import run_sweep

    walls = {"float32": 0.0, "bfloat16": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for rank in (1, 8):  # in turns, run by run
            for dtype in walls:
                spec = SweepSpec.from_dict({"model": {"name": model_name, "dtype": dtype, "device": "cpu"},
                                            "train": {"max_steps": steps}, "lora": {"rank": rank},
                                            "probe": {"steps": "log", "every": steps}})
                walls[dtype] += _timed(lambda: run_sweep(spec, Path(tmp) / dtype, progress=False))
    print(f"sweep  2 ranks x {steps} steps with probes: float32 {walls['float32']:6.1f} s | bfloat16 "
          f"{walls['bfloat16']:6.1f} s | ratio {walls['float32'] / walls['bfloat16']:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--parts", nargs="+", default=["step", "probe", "sweep"], choices=["step", "probe", "sweep"])
    parser.add_argument("--steps", type=int, default=4, help="interleaved step pairs")
    parser.add_argument("--sweep-steps", type=int, default=6)
    args = parser.parse_args()
    print(cpu_line())
    ctxs = _contexts(args.model)
    ratio = bench_step(ctxs, args.steps) if "step" in args.parts else None
    if "probe" in args.parts:
        bench_probe(ctxs, reps=2)
    if "sweep" in args.parts:
        if ratio is not None and ratio < 1 / SLOW:
            print(f"sweep  skipped: bfloat16 steps are {1 / ratio:.0f}x slower than float32 here (emulated without "
                  "bfloat16 matrix instructions); model.dtype = 'auto' keeps float32 on this CPU")
        else:
            bench_sweep(args.model, args.sweep_steps)


if __name__ == "__main__":
    main()
