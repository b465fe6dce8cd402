"""Compiled-training benchmarks on the embedded default (SmolLM2-135M, all-linear LoRA, batch 4 x 128).

Prints ratios measured in this one run:
1. ``step``: the steady-state training step of the toolkit's compiled Trainer run against the
   eager hand-written loop, the two interleaved step for step, the cold compilation's cost, and
   the compiled loss against the eager loss after the same steps;
2. ``probe``: a probe through the compiled layers against the eager probe;
3. ``cache``: the compilation of a fresh process against a second one on the same (warm)
   inductor cache.

``[train] compile = "auto"`` compiles on CUDA only: on a CPU the step is matmul-bound and these
ratios stay near 1 (README, "Compiled training").

Usage: python benchmarks/bench_compile.py [--parts step probe cache] [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_sweep import hand_loop_step  # noqa: E402  (the eager baseline, shared with bench_sweep)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _steady(times: list[float]) -> float:
    """Median step time after the first two steps (compilation, allocator warm-up)."""
    return statistics.median(times[2:])


def _setup(model_name: str):
    from forgetting_laws.measure.setup import prepare_run
    from forgetting_laws.measure.spec import SweepSpec

    spec = SweepSpec.from_dict({"model": {"name": model_name}, "lora": {"rank": 8}}).base
    return spec, prepare_run(spec)


def bench_step(model_name: str, steps: int) -> None:
    """Compiled Trainer steps interleaved with eager hand-loop steps, one for one.

    After each compiled step a callback runs and times one step of the hand loop on a second,
    eager copy of the model, so the two series see the same machine at the same minutes.
    """
    import copy

    from transformers import TrainerCallback

    from forgetting_laws.measure.compiling import compiled
    from forgetting_laws.measure.methods import make_method
    from forgetting_laws.measure.methods.lora import lora_model
    from forgetting_laws.measure.train import build_trainer

    spec, ctx = _setup(model_name)
    batch = spec.train.batch_size
    blocks = torch.from_numpy(ctx.data.train[: batch * (steps + 1)]).view(-1, batch, spec.data.seq_len)
    hand_step = hand_loop_step(lora_model(copy.deepcopy(ctx.model), spec), blocks, spec.train.lr)
    times, hand_times = [], []

    class Interleave(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)
            hand_times.append(_timed(lambda: hand_step(state.global_step)))

    def trainer_loss(model, callbacks) -> float:
        spec.train.max_steps = steps
        with tempfile.TemporaryDirectory() as out:
            return build_trainer(spec, make_method(spec), model, ctx.data.train, out, callbacks).train().training_loss

    model = lora_model(copy.deepcopy(ctx.model), spec)
    with compiled(model, spec.lora.rank):
        loss = trainer_loss(model, [Interleave()])
    hand, comp = _steady(hand_times), _steady(times)
    pairs = sorted(h / c for h, c in zip(hand_times[2:], times[2:]))
    eager_loss = trainer_loss(lora_model(copy.deepcopy(ctx.model), spec), [])
    print(f"step   eager hand loop {hand:5.2f} s | compiled Trainer {comp:5.2f} s | ratio {hand / comp:4.2f}x; "
          f"{len(pairs)} interleaved pairs {pairs[0]:4.2f}x to {pairs[-1]:4.2f}x; cold compilation "
          f"{times[0] - comp:5.1f} s; mean loss over {steps} steps: eager {eager_loss:.5f}, compiled {loss:.5f}")


def bench_probe(model_name: str) -> None:
    from forgetting_laws.measure.compiling import compiled
    from forgetting_laws.measure.methods.lora import lora_model
    from forgetting_laws.measure.probes import probe

    spec, ctx = _setup(model_name)
    data = ctx.probe_data
    peft_model = lora_model(ctx.model, spec)
    probe(peft_model, data)
    eager = min(_timed(lambda: probe(peft_model, data)) for _ in range(3))
    with compiled(peft_model, spec.lora.rank):
        first = _timed(lambda: probe(peft_model, data))
        comp = min(_timed(lambda: probe(peft_model, data)) for _ in range(3))
    print(f"probe  eager {eager:5.2f} s | compiled {comp:5.2f} s | ratio {eager / comp:4.2f}x faster; "
          f"first compiled probe {first:5.1f} s (compiles the forward graph once per sweep)")


_ONE_STEP = """
import sys, time
sys.path.insert(0, {bench!r})
import torch
from bench_compile import _setup
from forgetting_laws.measure.compiling import compiled
from forgetting_laws.measure.methods.lora import lora_model
spec, ctx = _setup({model!r})
model = lora_model(ctx.model, spec)
ids = torch.from_numpy(ctx.data.train[: spec.train.batch_size])
with compiled(model, spec.lora.rank):
    t0 = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    print(time.perf_counter() - t0)
"""


def bench_cache(model_name: str) -> None:
    """The first compiled step of a fresh process: on a cold cache, then on the same, warm cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "FORGETTING_LAWS_CACHE": cache, "TORCHINDUCTOR_CACHE_DIR": str(Path(cache) / "inductor")}
        code = _ONE_STEP.format(bench=str(Path(__file__).parent), model=model_name)
        cold, warm = (float(subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                                           text=True).stdout.split()[-1]) for _ in range(2))
    print(f"cache  first compiled step of a fresh process: cold inductor cache {cold:5.1f} s | warm cache "
          f"{warm:5.1f} s | ratio {cold / warm:4.1f}x cheaper")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--parts", nargs="+", default=["step", "probe", "cache"], choices=["step", "probe", "cache"])
    parser.add_argument("--steps", type=int, default=8, help="steps of the step benchmark")
    args = parser.parse_args()
    for part in args.parts:
        {"step": lambda: bench_step(args.model, args.steps), "probe": lambda: bench_probe(args.model),
         "cache": lambda: bench_cache(args.model)}[part]()


if __name__ == "__main__":
    main()
