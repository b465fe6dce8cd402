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
from bench_sweep import hand_loop_step  # noqa: E402  (the eager baseline, shared with bench_sweep)

REPO = Path(__file__).resolve().parents[1]


def _fresh_cache() -> str:
    cache = tempfile.mkdtemp(prefix="fl-bench-")
    os.environ["FORGETTING_LAWS_CACHE"] = cache
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache) / "inductor")
    return cache


def _trainer_steps(spec, model, train, steps: int, callbacks=()) -> tuple[list[float], float]:
    """Per-step seconds of the toolkit's Trainer run (``steps`` steps) and its last loss."""
    from forgetting_laws.measure.methods import make_method
    from forgetting_laws.measure.train import StepTimer, build_trainer, resolve_device

    timer = StepTimer()
    spec.train.max_steps = steps
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(spec, make_method(spec), model, train, out, [timer, *callbacks],
                                *resolve_device(spec))
        result = trainer.train()
    return timer.times, result.training_loss


def bench_step(model_name: str, steps: int) -> None:
    """Compiled Trainer steps interleaved with eager hand-loop steps, one for one.

    After each compiled step (timed by the Trainer's ``StepTimer``) a callback runs and times one
    step of the hand loop on a second, eager copy of the model. The two series see the same
    machine at the same minutes, so the paired ratios are not swept away by the shared host's
    drift; each series is summarised by its median after the first two steps.
    """
    from transformers import TrainerCallback

    from forgetting_laws.measure.compiling import CompilePlan, prepare_for_compile, steady_step
    from forgetting_laws.measure.config import SweepSpec
    from forgetting_laws.measure.methods.lora import lora_model
    from forgetting_laws.measure.models import load_model, model_fingerprint
    from forgetting_laws.measure.train import prepare_data

    _fresh_cache()
    spec = SweepSpec.from_dict({"model": {"name": model_name}, "lora": {"rank": 8}}).base
    base, tok = load_model(model_name)
    train, _, _ = prepare_data(spec, tok, model_fingerprint(base))
    batch = spec.train.batch_size
    blocks = torch.from_numpy(train[: batch * (steps + 1)]).view(-1, batch, spec.data.seq_len)
    eager = lora_model(load_model(model_name)[0], spec)
    hand_step = hand_loop_step(eager, blocks, spec.train.lr)
    hand_times: list[float] = []

    class Interleave(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            hand_times.append(_timed(lambda: hand_step(state.global_step)))

    model = lora_model(base, spec)
    prepare_for_compile(model, CompilePlan(True, pad_rank=None, probes=True, key="bench"))
    times, loss = _trainer_steps(spec, model, train, steps, [Interleave()])
    hand, compiled = steady_step(hand_times), steady_step(times)
    pairs = sorted(h / c for h, c in zip(hand_times[2:], times[2:]))
    print(f"step   eager hand loop {hand:5.2f} s | compiled Trainer {compiled:5.2f} s | ratio "
          f"{hand / compiled:4.2f}x faster than the hand loop (goal >= 1.4); {len(pairs)} interleaved "
          f"pairs: {pairs[0]:4.2f}x to {pairs[-1]:4.2f}x")
    eager_times, eager_loss = _trainer_steps(spec, lora_model(load_model(model_name)[0], spec), train, steps)
    print(f"step   eager Trainer {steady_step(eager_times):5.2f} s (after the pairs, not interleaved) | "
          f"cold compilation {times[0] - compiled:5.1f} s = {(times[0] - compiled) / hand:4.1f} eager steps | "
          f"mean loss over {steps} steps: eager {eager_loss:.5f}, compiled {loss:.5f} "
          f"(|diff| {abs(eager_loss - loss):.1e})")


def bench_probe(model_name: str) -> None:
    from forgetting_laws.measure.compiling import CompilePlan, prepare_for_compile
    from forgetting_laws.measure.config import SweepSpec
    from forgetting_laws.measure.methods.lora import lora_model
    from forgetting_laws.measure.models import load_model, model_fingerprint
    from forgetting_laws.measure.probes import ProbeData, base_targets, probe
    from forgetting_laws.measure.train import prepare_data

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


def _env(cache: str, **extra: str) -> dict:
    return {**os.environ, "FORGETTING_LAWS_CACHE": cache, "TORCHINDUCTOR_CACHE_DIR": str(Path(cache) / "inductor"),
            **extra}


def _sweep_cmd(spec_text: str, out: Path) -> list[str]:
    spec = out.with_suffix(".toml")
    spec.write_text(spec_text)
    return [sys.executable, "-m", "forgetting_laws.cli", "sweep", str(spec), "--out", str(out)]


def _sweep(spec_text: str, cache: str, out: Path) -> float:
    """Wall seconds of ``forgetting-laws sweep`` in a fresh process, with ``cache`` as its cache."""
    cmd = _sweep_cmd(spec_text, out)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=_env(cache), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _paired_sweeps(specs: dict[str, str], tmp: Path) -> dict[str, float]:
    """Seconds of each sweep, run as two processes that take turns run by run (``_turns.py``).

    Each gets its own cold cache; a sweep's seconds are its process's wall time less its waits.
    """
    turns = tmp / "turns"
    turns.mkdir()
    first, second = specs
    (turns / "turn").write_text(first)
    procs, t0 = {}, time.perf_counter()
    for me, other in ((first, second), (second, first)):
        env = _env(tempfile.mkdtemp(prefix=f"fl-bench-{me}-"), FORGETTING_LAWS_PLUGINS="_turns",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), str(REPO),
                                                            os.environ.get("PYTHONPATH")])),
                   FL_BENCH_TURNS=str(turns), FL_BENCH_ME=me, FL_BENCH_OTHER=other)
        procs[me] = subprocess.Popen(_sweep_cmd(specs[me], tmp / me), env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    walls = {}
    for me, proc in procs.items():
        if proc.wait() != 0:
            raise RuntimeError(f"the {me!r} sweep failed (exit {proc.returncode}); rerun it alone to see why")
        walls[me] = time.perf_counter() - t0
    return {me: walls[me] - float((turns / f"{me}.wait").read_text()) for me in specs}


def _metas(out: Path) -> dict[int, dict]:
    metas = [json.loads(p.read_text()) for p in out.glob("*.json")]
    return {m["spec"]["lora"]["rank"]: m for m in metas if "run_id" in m and "spec" in m}


def _compile_costs(cache: str) -> dict:
    path = Path(cache) / "compile" / "costs.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _demo_spec(model_name: str, steps: int, ranks: list[int], compile_value: str) -> str:
    base = (REPO / "sweeps" / "demo.toml").read_text()
    return (base.replace('name = "smollm2-135m"', f'name = "{model_name}"')
            .replace("max_steps = 60", f"max_steps = {steps}")
            .replace('"lora.rank" = [1, 4, 16, 64]', f'"lora.rank" = {ranks}')
            .replace("[train]", f"[train]\ncompile = {compile_value}"))


def bench_sweep(model_name: str, steps: int, ranks: list[int]) -> None:
    """``compile = "auto"`` against ``false`` on a whole sweep, the two taking turns run by run."""
    specs = {"false": _demo_spec(model_name, steps, ranks, "false"),
             "auto": _demo_spec(model_name, steps, ranks, '"auto"')}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        secs = _paired_sweeps(specs, tmp)
        runs = {name: _metas(tmp / name) for name in specs}
    pairs = sorted(runs["false"][r]["wall_s"] / runs["auto"][r]["wall_s"] for r in runs["auto"])
    compiled = sorted(r for r, m in runs["auto"].items() if m.get("compiled"))
    reasons = [f"rank {r}: {runs['auto'][r].get('compile_reason')}" for r in sorted(runs["auto"])]
    print(f"sweep  {len(ranks)} ranks x {steps} steps, the two sweeps taking turns run by run: compile = false "
          f"{secs['false'] / 60:5.1f} min | compile = 'auto' {secs['auto'] / 60:5.1f} min | ratio "
          f"{secs['false'] / secs['auto']:4.2f}x (goal >= 0.98); per-run ratios {pairs[0]:4.2f}x to {pairs[-1]:4.2f}x")
    print(f"sweep  'auto' compiled ranks {compiled or 'none'}; its plan for each rank:\n       "
          + "\n       ".join(reasons))


def bench_cache(model_name: str, steps: int, ranks: list[int]) -> None:
    """A ``compile = true`` sweep, then a second, identical one on the same cache (warm inductor cache)."""
    spec = _demo_spec(model_name, steps, ranks, "true")
    cache = tempfile.mkdtemp(prefix="fl-bench-cache-")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        first = _sweep(spec, cache, tmp / "first")
        cold = _compile_costs(cache).get("cold", {})
        second = _sweep(spec, cache, tmp / "second")  # same cache, new RUNS_DIR: every run again
        warm = _compile_costs(cache).get("warm", {})
    keys = [k for k in cold if k in warm]  # the group's key (and its family's, the same numbers)
    if not keys:
        print(f"cache  no compilation recorded twice (cold {sorted(cold)}, warm {sorted(warm)})")
        return
    c, w = cold[keys[0]], warm[keys[0]]
    print(f"cache  {len(ranks)} ranks x {steps} steps, compile = true: compilation in the first sweep {c:5.1f} s | "
          f"in a second, identical sweep (warm cache) {w:5.1f} s | ratio {c / max(w, 1e-9):4.1f}x cheaper; "
          f"sweeps {first / 60:4.1f} min and {second / 60:4.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--parts", nargs="+", default=["step", "probe", "sweep", "cache"],
                        choices=["step", "probe", "sweep", "cache"])
    parser.add_argument("--steps", type=int, default=8, help="steps of the step benchmark")
    parser.add_argument("--sweep-steps", type=int, default=60)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--cache-steps", type=int, default=6, help="steps of each run of the cache benchmark")
    args = parser.parse_args()
    if "step" in args.parts:
        bench_step(args.model, args.steps)
    if "probe" in args.parts:
        bench_probe(args.model)
    if "sweep" in args.parts:
        bench_sweep(args.model, args.sweep_steps, args.ranks)
    if "cache" in args.parts:
        bench_cache(args.model, args.cache_steps, args.ranks)


if __name__ == "__main__":
    main()
