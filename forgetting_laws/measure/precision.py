"""The precision a run computes in, resolved once, before its run id exists.

``[model] dtype = "auto"`` becomes a concrete ``"bfloat16"`` or ``"float32"`` when the spec is
expanded into runs, so the run id (and the sidecar's spec) always names the precision the run
computed in, and two machines that resolve "auto" differently never share an id:

- on CUDA (``model.device`` cuda, or "auto" with a GPU here, or ``sweep.num_gpus > 0``):
  bfloat16;
- on a CPU: bfloat16 only where the CPU multiplies bfloat16 in hardware (the ``amx_bf16`` or
  ``avx512_bf16`` flag) *and* a short matmul check shows it faster than float32; the check runs
  once per machine and is kept in the toolkit's cache, so the choice does not flip with the load.
  Without the instructions, bfloat16 matmuls are emulated (30x slower than float32 on a Zen 3
  EPYC), and "auto" never picks them.
"""

from __future__ import annotations

import contextlib
import json
import platform
from pathlib import Path
from typing import Iterator

from ..cache import cache_dir

__all__ = ["resolve_dtype", "cpu_bf16_flags", "bf16_check", "probing", "BF16_FLAGS"]

#: CPU flags (``/proc/cpuinfo``) of bfloat16 matrix instructions: Intel AMX and AVX-512 BF16.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The bfloat16 matrix flags this CPU reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return [f for f in BF16_FLAGS if f in flags]


def _cpu_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_check(size: int = 512, reps: int = 5) -> dict:
    """Time float32 against bfloat16 matmuls (size x size, best of ``reps``) on this CPU, once.

    The result (``{"cpu", "flags", "torch", "fp32_s", "bf16_s", "speedup"}``) is cached in
    ``cache_dir()/precision.json`` per CPU and torch version.
    """
    import time

    import torch

    key = f"{_cpu_name()}|{','.join(cpu_bf16_flags())}|{torch.__version__}"
    path = cache_dir() / "precision.json"
    cached = json.loads(path.read_text()) if path.exists() else {}
    if key in cached:
        return cached[key]
    times = {}
    for name, dtype in (("fp32_s", torch.float32), ("bf16_s", torch.bfloat16)):
        a = torch.randn(size, size).to(dtype)
        a @ a
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    result = {"cpu": _cpu_name(), "flags": cpu_bf16_flags(), "torch": torch.__version__, **times,
              "speedup": times["fp32_s"] / times["bf16_s"]}
    cached[key] = result
    path.write_text(json.dumps(cached, indent=1))
    return result


def _on_cuda(spec) -> bool:
    device = spec.model.device
    if device.startswith("cuda") or spec.sweep.num_gpus > 0:
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def resolve_dtype(spec) -> str:
    """The concrete dtype of a run: the spec's, or for "auto" as the module docstring says."""
    if spec.model.dtype != "auto":
        return spec.model.dtype
    if _on_cuda(spec):
        return "bfloat16"
    if cpu_bf16_flags() and bf16_check()["speedup"] > 1.1:
        return "bfloat16"
    return "float32"


@contextlib.contextmanager
def probing(model, precision: str = "float32") -> Iterator[str]:
    """The probes' precision around ``model`` (a bfloat16 run's; a float32 model is left as it is).

    ``"float32"``: the frozen bfloat16 weights are upcast in place for the probe and cast back
    after (bfloat16 -> float32 -> bfloat16 is exact), so a bfloat16 run is probed in the same
    precision as a float32 run. ``"run"``: bfloat16 autocast, as the run trains (the probes take
    the log-softmax in float32). Yields the tag of what the probe computes in (a cache key part).
    """
    import torch

    low = [p for p in model.parameters() if p.dtype == torch.bfloat16]
    if not low:
        yield "float32"
    elif precision == "run":
        device = next(model.parameters()).device.type
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            yield "bfloat16-autocast"
    else:
        for p in low:
            p.data = p.data.float()
        try:
            yield "float32"
        finally:
            for p in low:
                p.data = p.data.to(torch.bfloat16)
