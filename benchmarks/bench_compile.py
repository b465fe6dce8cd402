"""Compiled-training benchmarks on the embedded default (SmolLM2-135M, all-linear LoRA, batch 4 x 128).

Prints ratios measured in this one run:
1. ``step``: the steady-state training step of the toolkit's compiled Trainer run against the
   eager hand-written loop (goal >= 1.4x on a 2-core CPU), the cold compilation's cost, and
   the compiled loss against the eager loss after the same steps;
2. ``probe``: a probe through the compiled layers against the eager probe;
3. ``sweep``: a whole rank x step sweep (default 4 ranks x 60 steps, each a fresh process and a
   fresh cache) with ``compile = "auto"`` against ``compile = false`` (goal: never slower
   than 0.98x), and the compilation cost of a second, identical sweep (inductor's warm disk
   cache) against the first.

Usage: python benchmarks/bench_compile.py [--parts step probe sweep] [--steps 8]
       [--sweep-steps 60] [--ranks 1 4 16 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_sweep import hand_loop  # noqa: E402  (the eager baseline, shared with bench_sweep)

REPO = Path(__file__).resolve().parents[1]


def _fresh_cache() -> str:
    cache = tempfile.mkdtemp(prefix="fl-bench-")
    os.environ["FORGETTING_LAWS_CACHE"] = cache
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache) / "inductor")
    return cache


def _trainer_steps(spec, model, train, steps: int) -> tuple[list[float], float]:
    """Per-step seconds of the toolkit's Trainer run (``steps`` steps) and its last loss."""
    from forgetting_laws.methods import make_method
    from forgetting_laws.train import StepTimer, build_trainer, resolve_device

    timer = StepTimer()
    spec.train.max_steps = steps
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(spec, make_method(spec), model, train, out, [timer], *resolve_device(spec))
        result = trainer.train()
    return timer.times, result.training_loss


def bench_step(model_name: str, steps: int) -> None:
    from forgetting_laws.compiling import CompilePlan, prepare_for_compile, steady_step
    from forgetting_laws.config import SweepSpec
    from forgetting_laws.methods.lora import lora_model
    from forgetting_laws.models import load_model, model_fingerprint
    from forgetting_laws.train import prepare_data

    _fresh_cache()
    spec = SweepSpec.from_dict({"model": {"name": model_name}, "lora": {"rank": 8}}).base
    base, tok = load_model(model_name)
    train, _, _ = prepare_data(spec, tok, model_fingerprint(base))
    batch = spec.train.batch_size
    blocks = torch.from_numpy(train[: batch * (steps + 1)]).view(-1, batch, spec.data.seq_len)
    hand = hand_loop(lora_model(load_model(model_name)[0], spec), blocks, steps, spec.train.lr) / steps
    eager_times, eager_loss = _trainer_steps(spec, lora_model(load_model(model_name)[0], spec), train, steps)
    model = lora_model(base, spec)
    prepare_for_compile(model, CompilePlan(True, pad_rank=None, probes=True, key="bench"))
    times, loss = _trainer_steps(spec, model, train, steps)
    compiled = steady_step(times)
    print(f"step   eager hand loop {hand:5.2f} s | eager Trainer {steady_step(eager_times):5.2f} s | "
          f"compiled Trainer {compiled:5.2f} s | ratio {hand / compiled:4.2f}x faster than the hand loop "
          f"(goal >= 1.4)")
    print(f"step   cold compilation {times[0] - compiled:5.1f} s = {(times[0] - compiled) / hand:4.1f} eager "
          f"steps | mean loss over {steps} steps: eager {eager_loss:.5f}, compiled {loss:.5f} "
          f"(|diff| {abs(eager_loss - loss):.1e})")


def bench_probe(model_name: str) -> None:
    from forgetting_laws.compiling import CompilePlan, prepare_for_compile
    from forgetting_laws.config import SweepSpec
    from forgetting_laws.methods.lora import lora_model
    from forgetting_laws.models import load_model, model_fingerprint
    from forgetting_laws.probes import ProbeData, base_targets, probe
    from forgetting_laws.train import prepare_data

    spec = SweepSpec.from_dict({"model": {"name": model_name}}).base
    model, tok = load_model(model_name)
    key = model_fingerprint(model)
    _, heldout, ref = prepare_data(spec, tok, key)
    ref = torch.from_numpy(ref)
    data = ProbeData(ref, base_targets(model, ref, key), torch.from_numpy(heldout))
    peft_model = lora_model(model, spec)
    probe(peft_model, data)
    eager = min(_timed(lambda: probe(peft_model, data)) for _ in range(3))
    prepare_for_compile(peft_model, CompilePlan(True, pad_rank=None, probes=True, key="bench"))
    first = _timed(lambda: probe(peft_model, data))
    compiled = min(_timed(lambda: probe(peft_model, data)) for _ in range(3))
    print(f"probe  eager {eager:5.2f} s | compiled {compiled:5.2f} s | ratio {eager / compiled:4.2f}x faster; "
          f"first compiled probe {first:5.1f} s (compiles the forward graph once per sweep)")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _sweep(spec_text: str, cache: str, out: Path) -> float:
    """Wall seconds of ``forgetting-laws sweep`` in a fresh process, with ``cache`` as its cache."""
    spec = out.with_suffix(".toml")
    spec.write_text(spec_text)
    env = {**os.environ, "FORGETTING_LAWS_CACHE": cache, "TORCHINDUCTOR_CACHE_DIR": str(Path(cache) / "inductor")}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "forgetting_laws.cli", "sweep", str(spec), "--out", str(out)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _compile_costs(cache: str) -> dict:
    path = Path(cache) / "compile" / "costs.json"
    return json.loads(path.read_text()) if path.exists() else {}


def bench_sweep(model_name: str, steps: int, ranks: list[int]) -> None:
    base = (REPO / "sweeps" / "demo.toml").read_text()
    text = (base.replace('name = "smollm2-135m"', f'name = "{model_name}"')
            .replace("max_steps = 60", f"max_steps = {steps}")
            .replace('"lora.rank" = [1, 4, 16, 64]', f'"lora.rank" = {ranks}'))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        caches = {name: tempfile.mkdtemp(prefix=f"fl-bench-{name}-") for name in ("eager", "auto")}
        walls = {}
        for name in ("eager", "auto"):  # each with its own cold cache: a first sweep on this machine
            compile_line = "compile = false" if name == "eager" else 'compile = "auto"'
            spec = text.replace("[train]", f"[train]\n{compile_line}")
            walls[name] = _sweep(spec, caches[name], tmp / name)
        spec = text.replace("[train]", '[train]\ncompile = "auto"')
        walls["auto-again"] = _sweep(spec, caches["auto"], tmp / "again")  # same cache, new RUNS_DIR
        metas = [json.loads(p.read_text()) for p in (tmp / "auto").glob("*.json")]
        costs = _compile_costs(caches["auto"])
    compiled = any(m.get("compiled") for m in metas)
    print(f"sweep  {len(ranks)} ranks x {steps} steps: compile = false {walls['eager'] / 60:5.1f} min | "
          f"compile = 'auto' {walls['auto'] / 60:5.1f} min ({'compiled' if compiled else 'stayed eager'}: "
          f"{metas[0].get('compile_reason')}) | ratio {walls['eager'] / walls['auto']:4.2f}x (goal >= 0.98)")
    cold, warm = list(costs.get("cold", {}).values()), list(costs.get("warm", {}).values())
    if cold and warm:
        print(f"sweep  compilation: first sweep {cold[0]:5.1f} s | second, identical sweep (warm cache) "
              f"{warm[0]:5.1f} s | ratio {cold[0] / max(warm[0], 1e-9):4.1f}x cheaper; second sweep "
              f"{walls['auto-again'] / 60:5.1f} min")
    else:
        print(f"sweep  second, identical sweep {walls['auto-again'] / 60:5.1f} min (auto did not compile: "
              f"no compilation cost to compare)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--parts", nargs="+", default=["step", "probe", "sweep"], choices=["step", "probe", "sweep"])
    parser.add_argument("--steps", type=int, default=8, help="steps of the step benchmark")
    parser.add_argument("--sweep-steps", type=int, default=60)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 16, 64])
    args = parser.parse_args()
    if "step" in args.parts:
        bench_step(args.model, args.steps)
    if "probe" in args.parts:
        bench_probe(args.model)
    if "sweep" in args.parts:
        bench_sweep(args.model, args.sweep_steps, args.ranks)


if __name__ == "__main__":
    main()
