"""What a sweep will cost, before it runs: :func:`estimate_sweep` (``sweep --dry-run``).

Models this machine loads (aliases, local folders, .gguf files) are timed by a short
calibration of their smallest and largest rank (:func:`calibrate`). Models that cannot be loaded
here (hub ids such as ``meta-llama/Llama-2-7b-chat-hf`` on a machine without the weights or
network) get an analytic cost on GPUs: FLOPs, GPU-hours and memory. Their shape comes from a
config found offline (a local directory, or the Hugging Face cache) or from
:data:`KNOWN_SHAPES`. Only the calibration imports torch.

FLOPs of one update on ``tau = batch_size x grad_accum x seq_len`` tokens, with N the
parameters of the matmuls (all but the input embedding), L layers, width h, context T and
P LoRA parameters:

.. math::

    F_{step} = \\tau \\left[(2 + 2 + 2 g) N + (4 + 8 + 4 g) L T h + 6 P\\right] \\cdot c

forward 2N, backward through the frozen weights 2N (activation gradients only, no weight
gradients), an extra forward 2N when activation checkpointing is on (g = 1), attention scores
4LTh forward and twice that backward, LoRA's own forward and backward 6P, and c the method's
``step_cost`` (SAM: 2). A probe costs forward passes (2N + 4LTh per token) over the reference
and held-out blocks. Seconds = FLOPs / (peak x MFU); the peak is the GPU's dense bf16 rate
and the MFU (model FLOP utilisation) an assumption the command line states and lets you change.

Example
-------
>>> shape = KNOWN_SHAPES["meta-llama/Llama-2-7b-chat-hf"]
>>> round(lora_params(shape, rank=8) / 1e6, 1)    # the paper's P at rank 8, about 20M
20.0
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import ConfigError

__all__ = ["ModelShape", "KNOWN_SHAPES", "GPUS", "model_shape", "shape_from_config", "lora_params",
           "step_flops", "run_flops", "gpu_hours", "memory_gb", "calibrated_seconds", "estimate_sweep", "SweepEstimate",
           "batch_lines"]


@dataclass(frozen=True)
class ModelShape:
    """What the cost of a decoder-only transformer depends on."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied: bool = False

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear module of one layer, by its usual Llama/Qwen name."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def matmul_params(self) -> int:
        """Parameters multiplied per token: every layer's linears and the output head."""
        return self.layers * sum(a * b for a, b in self.linear_shapes().values()) + self.vocab * self.hidden

    @property
    def n_params(self) -> int:
        """All parameters (norms left out: under 0.01%)."""
        return self.matmul_params + (0 if self.tied else self.vocab * self.hidden)


#: Shapes of the models the shipped GPU specs name, so their dry-runs need no download.
KNOWN_SHAPES: dict[str, ModelShape] = {
    "smollm2-135m": ModelShape(30, 576, 1536, 49152, 9, 3, tied=True),  # the embedded default
    "meta-llama/Llama-2-7b-chat-hf": ModelShape(32, 4096, 11008, 32000, 32, 32),
    "meta-llama/Llama-2-7b-hf": ModelShape(32, 4096, 11008, 32000, 32, 32),
    "Qwen/Qwen2.5-0.5B-Instruct": ModelShape(24, 896, 4864, 151936, 14, 2, tied=True),
    "Qwen/Qwen2.5-1.5B-Instruct": ModelShape(28, 1536, 8960, 151936, 12, 2, tied=True),
    "meta-llama/Llama-3.2-1B-Instruct": ModelShape(16, 2048, 8192, 128256, 32, 8, tied=True),
}

#: Dense bf16 peak FLOP/s (no sparsity) and memory (GB) of common GPUs.
GPUS: dict[str, tuple[float, float]] = {
    "a100": (312e12, 80), "h100": (989e12, 80), "h200": (989e12, 141), "l40s": (362e12, 48),
    "a10g": (125e12, 24), "rtx4090": (165e12, 24),
}


def shape_from_config(cfg: dict) -> ModelShape:
    """The shape of a decoder-only transformer from its ``config.json`` values."""
    heads = cfg["num_attention_heads"]
    return ModelShape(cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"],
                      cfg["vocab_size"], heads, cfg.get("num_key_value_heads") or heads,
                      bool(cfg.get("tie_word_embeddings", False)))


def _offline_config(name: str) -> dict | None:
    """The model's config.json from a local directory or the Hugging Face cache, never the network."""
    local = Path(name) / "config.json"
    if local.is_file():
        import json

        return json.loads(local.read_text())
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - installed with transformers
        return None
    found = try_to_load_from_cache(name, "config.json")
    if isinstance(found, str):
        import json

        return json.loads(Path(found).read_text())
    return None


def model_shape(name: str) -> ModelShape:
    """The shape of ``name`` from a config found offline, else from :data:`KNOWN_SHAPES`."""
    cfg = _offline_config(name)
    if cfg is not None:
        try:
            return shape_from_config(cfg)
        except KeyError as exc:
            raise ConfigError(f"model.name = {name!r}: its config has no {exc.args[0]!r}; the analytic "
                              "estimate covers decoder-only transformers (Llama, Qwen, Mistral, ...)") from None
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name]
    raise ConfigError(
        f"model.name = {name!r}: its size is not known offline, so --dry-run cannot estimate its cost; "
        f"download its config once (huggingface-cli download {name} config.json) or use one of "
        f"{', '.join(KNOWN_SHAPES)}"
    )


def lora_params(shape: ModelShape, rank: int, target_modules: str | list[str] = "all-linear") -> int:
    """LoRA parameters P: ``rank x (in + out)`` for each adapted linear of each layer."""
    modules = shape.linear_shapes()
    names = list(modules) if target_modules == "all-linear" else [m for m in target_modules if m in modules]
    return rank * shape.layers * sum(sum(modules[m]) for m in names)


def _token_flops(shape: ModelShape, seq_len: int) -> tuple[float, float]:
    """(matmul FLOPs per token per 2N unit, attention FLOPs per token forward)."""
    return shape.matmul_params, 4.0 * shape.layers * seq_len * shape.hidden


def step_flops(run, shape: ModelShape) -> float:
    """FLOPs of one update of ``run`` (see the module docstring)."""
    from .methods import get_method

    t = run.train
    n, attn = _token_flops(shape, run.data.seq_len)
    g = 1.0 if t.gradient_checkpointing else 0.0
    p = lora_params(shape, run.lora.rank, run.lora.target_modules)
    tokens = t.batch_size * t.grad_accum * run.data.seq_len
    return tokens * ((4 + 2 * g) * n + (3 + g) * attn + 6 * p) * get_method(run.method.name).step_cost


def run_flops(run, shape: ModelShape) -> float:
    """FLOPs of one run: its updates and its probes (see the module docstring)."""
    t, d = run.train, run.data
    n, attn = _token_flops(shape, d.seq_len)
    step = step_flops(run, shape)
    blocks = d.reference_blocks * (2 if run.probe.forget_kl else 1) + d.heldout_blocks
    probes = len(run.probe.schedule(t.max_steps)) * blocks + d.reference_blocks  # + the base targets once
    return t.max_steps * step + probes * d.seq_len * (2 * n + attn)


def gpu_hours(flops: float, gpu: str, mfu: float) -> float:
    """GPU-hours to do ``flops`` on ``gpu`` at model FLOP utilisation ``mfu``."""
    if gpu not in GPUS:
        raise ConfigError(f"gpu = {gpu!r} is not known; use one of {', '.join(GPUS)}")
    if not 0 < mfu <= 1:
        raise ConfigError(f"mfu = {mfu!r}, must be in (0, 1]; 0.3-0.5 is typical of LoRA on one GPU")
    return flops / (GPUS[gpu][0] * mfu) / 3600


def memory_gb(run, shape: ModelShape) -> float:
    """Approximate peak GPU memory (GB) of one device: weights, adapter, optimiser, activations.

    bf16 weights (2 bytes each), fp32 LoRA parameters with their gradients and optimiser state
    (AdamW 8 bytes, Adafactor ~0, SGD 0), saved activations of one micro-batch of b blocks:
    about 34 b T h bytes per layer (Korthikanti et al. 2022, without the attention matrix SDPA
    never stores), or only each layer's input (2 b T h) plus one layer's worth under activation
    checkpointing, and the fp32 logits with their gradient (8 b T V bytes).
    """
    t, T = run.train, run.data.seq_len
    b, h, L = t.batch_size, shape.hidden, shape.layers
    p = lora_params(shape, run.lora.rank, run.lora.target_modules)
    state = {"adamw": 8, "adafactor": 0, "sgd": 0}[t.optimizer]
    layer = 34 * b * T * h
    acts = L * 2 * b * T * h + layer if t.gradient_checkpointing else L * layer
    total = 2 * shape.n_params + (8 + state) * p + acts + 8 * b * T * shape.vocab
    return total / 1e9


# --------------------------------------------------------------------------- calibration (CPU or GPU here)


def _time_steps(run, model, n: int = 2) -> float:
    """Seconds per optimiser step of ``run``'s LoRA on ``model`` (a fresh copy), after a warm-up."""
    import copy

    import torch

    from .methods.lora import lora_model
    from .setup import resolve_device

    device, _ = resolve_device(run)
    peft_model = lora_model(copy.deepcopy(model), run).to(device)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=run.train.lr)
    ids = torch.randint(0, model.config.vocab_size, (run.train.batch_size, run.data.seq_len), device=device)
    times = []
    for _ in range(n + 1):
        t0 = time.perf_counter()
        peft_model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return min(times[1:]) * run.train.grad_accum


def calibrated_seconds(spec) -> dict[str, float]:
    """Estimate each run's seconds from a short calibration of its smallest and largest rank.

    Step time is interpolated linearly in the rank between the two measured ranks and scaled by
    the method's ``step_cost`` (SAM: 2); a probe is timed as forward passes over the reference
    and held-out blocks.
    """
    import torch

    from .methods import get_method
    from .setup import load_base, resolve_device

    runs = spec.expand()
    t0 = time.perf_counter()
    device, _ = resolve_device(runs[0])
    model = load_base(runs[0])[0]
    load_s = time.perf_counter() - t0
    by_rank = sorted({r.lora.rank: r for r in runs}.items())
    lo, hi = by_rank[0], by_rank[-1]
    t_lo = _time_steps(lo[1], model)
    t_hi = _time_steps(hi[1], model) if hi[0] != lo[0] else t_lo
    model.to(device).eval()
    ids = torch.randint(0, model.config.vocab_size, (runs[0].probe.batch_size, runs[0].data.seq_len), device=device)
    with torch.inference_mode():
        t1 = time.perf_counter()
        model(input_ids=ids)
        fwd_s = (time.perf_counter() - t1) / runs[0].probe.batch_size  # seconds per block
    out = {"_load_s": load_s}
    for run in runs:
        frac = 0.0 if hi[0] == lo[0] else (run.lora.rank - lo[0]) / (hi[0] - lo[0])
        step_s = (t_lo + frac * (t_hi - t_lo)) * get_method(run.method.name).step_cost
        probes = len(run.probe.schedule(run.train.max_steps))
        blocks = run.data.reference_blocks * (2 if run.probe.forget_kl else 1) + run.data.heldout_blocks
        out[run.run_id] = run.train.max_steps * step_s + probes * blocks * fwd_s
    return out


# --------------------------------------------------------------------------- the dry-run


def fmt_seconds(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def batch_lines(runs: list, world: int) -> list[str]:
    """Per-device batch math of each distinct (batch_size, grad_accum); checks it splits over ``world``."""
    from .distributed import accumulation_per_device

    lines = []
    for b, g, T in sorted({(r.train.batch_size, r.train.grad_accum, r.data.seq_len) for r in runs}):
        per_device = accumulation_per_device(b, g, world)
        lines.append(f"update: {b} blocks x {g} micro-batches = {b * g} blocks x {T} tokens = {b * g * T} tokens; "
                     f"world size {world}: {per_device} micro-batch{'es' if per_device > 1 else ''} of {b} per device")
    return lines


@dataclass
class SweepEstimate:
    """A sweep's runs (``table``: one row each, ``todo`` marks those to run) and summary lines."""

    table: pd.DataFrame
    summary: list[str]
    planned: list = field(default_factory=list)


def _loads_here(name: str) -> bool:
    """True for models this machine builds or reads from disk (aliases, local dirs, .gguf files)."""
    from .models import model_aliases

    return name in model_aliases() or Path(name).is_dir() or name.endswith(".gguf")


def estimate_sweep(spec, runs_dir: str | Path, gpu: str = "a100", mfu: float = 0.4, world: int = 1,
                   calibrate: bool = True) -> SweepEstimate:
    """The runs of ``spec`` with their status in ``runs_dir`` and their estimated cost.

    Models this machine loads are timed by :func:`calibrated_seconds` (skipped with ``calibrate=False``);
    others get their analytic GPU-hours and memory on ``gpu`` at ``mfu`` over ``world`` GPUs.
    Nothing is downloaded, written or changed.
    """
    from .corpora import check_corpus_name
    from .sweep import plan

    planned = plan(spec, runs_dir)
    for name in ("dataset", "reference"):
        for corpus in sorted({getattr(p.spec.data, name) for p in planned}):
            check_corpus_name(corpus, f"data.{name}")
    if all(_loads_here(p.spec.model.name) for p in planned):
        return _measured(spec, planned, calibrate)
    return _analytic(planned, gpu, mfu, world)


def _measured(spec, planned: list, calibrate: bool) -> SweepEstimate:
    secs = calibrated_seconds(spec) if calibrate else {}
    rows = [{"run_id": p.spec.run_id, "method": p.spec.method.name, "rank": p.spec.lora.rank, "lr": p.spec.train.lr,
             "seed": p.spec.train.seed, "steps": p.spec.train.max_steps, "status": p.status or "todo",
             "est.": fmt_seconds(secs[p.spec.run_id]) if secs and p.todo else "-", "todo": p.todo} for p in planned]
    total = sum(secs[p.spec.run_id] for p in planned if p.todo) if secs else None
    summary = [] if total is None else [f"estimated time of the runs to do: {fmt_seconds(total)} (+ "
                                        f"{fmt_seconds(secs['_load_s'])} model load; from a short calibration "
                                        "on this machine)"]
    return SweepEstimate(pd.DataFrame(rows), summary, planned)


def _analytic(planned: list, gpu: str, mfu: float, world: int) -> SweepEstimate:
    rows, total, peak_mem = [], 0.0, 0.0
    for p in planned:
        r = p.spec
        shape = model_shape(r.model.name)
        flops, mem = run_flops(r, shape), memory_gb(r, shape)
        hours = gpu_hours(flops, gpu, mfu)
        total += hours if p.todo else 0.0
        peak_mem = max(peak_mem, mem)
        rows.append({"run_id": r.run_id, "method": r.method.name, "rank": r.lora.rank,
                     "P": f"{lora_params(shape, r.lora.rank, r.lora.target_modules) / 1e6:.1f}M",
                     "steps": r.train.max_steps, "status": p.status or "todo", "PFLOP": round(flops / 1e15, 1),
                     "GPU-h": round(hours, 2), "mem GB": round(mem, 1), "todo": p.todo})
    peak, capacity = GPUS[gpu]
    fits = "fits" if peak_mem <= capacity else ("does NOT fit: turn on train.gradient_checkpointing or lower "
                                                "train.batch_size (and raise train.grad_accum)")
    summary = [f"estimated GPU-hours of the runs to do: {total:.1f} on {gpu} ({peak / 1e12:.0f} TFLOP/s bf16 peak at "
               f"an assumed {mfu:.0%} MFU; --gpu, --mfu change these); wall time "
               f"{fmt_seconds(total * 3600 / world)} on {world} GPU{'s' if world > 1 else ''}",
               f"peak memory per device about {peak_mem:.0f} GB of the {gpu}'s {capacity:.0f} GB: {fits}"]
    return SweepEstimate(pd.DataFrame(rows), summary, planned)
