"""Compiled training, taken only where it pays, and paid for once per sweep.

``torch.compile`` makes a LoRA step faster but costs a compilation first. Three things make the
cost small and the choice automatic:

- **Regional compilation**: the decoder layers of a transformer are one class at one shape, so
  compiling layer 0 compiles them all (the others hit dynamo's cache); the embeddings, the LM
  head and the loss stay eager. Compiling a 30-layer model costs one layer's compilation.
- **One graph per sweep**: dynamo's cache belongs to the code, not to the module instance, so the
  next run of the sweep (a new adapter on a fresh copy of the model) reuses the graph. Ranks
  differ in shape, so every run of a compile group is padded to the group's largest rank
  (:func:`pad_lora`); the padding is inert (below), and the rsLoRA scaling becomes a tensor so
  its value is data, not a guard. Inductor's on-disk cache lives in the toolkit's cache
  directory, so a repeated or resumed sweep compiles from disk in seconds.
- **A cost model** (:func:`plan_compile`): ``compile = "auto"`` compiles a group of runs when
  its steps times the per-step saving exceed the compilation cost; both come from measurements
  recorded by earlier runs on this machine (:class:`CostBook`), or from priors measured on the
  embedded default before any are recorded.

Why the padding is inert: pad LoRA's A (r x d_in) with zero rows and B (d_out x r) with zero
columns to rank R. Then BA is unchanged; the padded rows of A get the gradient B_pad^T g = 0 and
the padded columns of B get g (A_pad x)^T = 0, so Adam's moments, its update, weight decay and
the clipped gradient norm leave them at exactly zero through training. Results change only by
floating-point summation order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from .models import cache_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .config import RunSpec

__all__ = ["CompilePlan", "CostBook", "plan_compile", "pad_lora", "unpad_lora", "prepare_for_compile",
           "compile_regions", "use_toolkit_inductor_cache", "eager_probes", "record", "group_key"]

#: Priors until this machine has measured its own (see CostBook), for SmolLM2-135M, all-linear
#: LoRA, batch 4 x 128, on an idle 2-core CPU (benchmarks/bench_compile.py --parts step probe):
#: eager Trainer step 3.23 s, compiled 2.32 s (1.39x, taken as 1.35 to be safe); the cold
#: compilation of the training graphs 25-28 s, plus ~7 s for the probe's forward graph. A
#: compilation's cost depends on the layer's code, not its width, so it is kept in seconds.
#: Each compiled run replaces them by this machine's measurements.
PRIOR_SPEEDUP = 1.35        # eager step / compiled step
PRIOR_COLD_S = 40.0         # a cold regional compilation (layer forward/backward, probe, loss)
PRIOR_WARM_S = 15.0         # the same from inductor's warm on-disk cache
#: Auto compiles only when the predicted saving exceeds this fraction of the eager time, so an
#: error in the estimate cannot make a sweep more than a few per cent slower.
MARGIN = 0.05


# --------------------------------------------------------------------------- the cache


def use_toolkit_inductor_cache() -> Path:
    """Point inductor's on-disk cache into the toolkit's cache unless the user chose a place."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


# --------------------------------------------------------------------------- the cost model


def group_key(run: "RunSpec", pad_rank: int) -> str:
    """Runs with the same key share one compiled graph: same model, shapes, method and device."""
    import torch

    t, d, m = run.train, run.data, run.model
    blob = json.dumps([m.name, m.dtype, m.device, d.seq_len, t.batch_size, run.method.name,
                       run.lora.target_modules, run.lora.dropout, pad_rank, torch.__version__,
                       torch.cuda.is_available()], default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _steps_key(run: "RunSpec") -> str:
    """What an eager step's time depends on (its rank too, recorded per rank)."""
    return group_key(run, 0)


@dataclass
class CostBook:
    """Measured step times and compilation costs on this machine, in ``cache_dir()/compile``.

    ``eager[steps_key][rank]`` and ``compiled[group_key]`` are seconds per step;
    ``cold[group_key]`` / ``warm[group_key]`` seconds of compilation without / with inductor's
    on-disk cache.
    """

    eager: dict[str, dict[str, float]] = field(default_factory=dict)
    compiled: dict[str, float] = field(default_factory=dict)
    cold: dict[str, float] = field(default_factory=dict)
    warm: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def path() -> Path:
        return cache_dir() / "compile" / "costs.json"

    @classmethod
    def load(cls) -> "CostBook":
        try:
            return cls(**json.loads(cls.path().read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return cls()

    def save(self) -> None:
        path = self.path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True))
        os.replace(tmp, path)

    def eager_step(self, run: "RunSpec") -> float | None:
        """Seconds per eager step at this run's rank: measured, or interpolated between ranks."""
        by_rank = {int(r): s for r, s in self.eager.get(_steps_key(run), {}).items()}
        if not by_rank:
            return None
        if run.lora.rank in by_rank:
            return by_rank[run.lora.rank]
        ranks = sorted(by_rank)
        lo = max([r for r in ranks if r < run.lora.rank], default=ranks[0])
        hi = min([r for r in ranks if r > run.lora.rank], default=ranks[-1])
        if lo == hi:
            return by_rank[lo]
        w = (run.lora.rank - lo) / (hi - lo)
        return (1 - w) * by_rank[lo] + w * by_rank[hi]


@dataclass
class CompilePlan:
    """How one run executes: compiled or not, the rank its LoRA is padded to, and why."""

    compile: bool = False
    pad_rank: int | None = None
    probes: bool = False  # probes run through the compiled layers too
    key: str = ""
    reason: str = "compile = false"


def _warm_marker(key: str) -> Path:
    return cache_dir() / "compile" / f"{key}.warm"


def _measure_eager(runs: list["RunSpec"], book: CostBook) -> None:
    """Time a few eager steps of the smallest and largest rank not yet in ``book`` (and record)."""
    from .models import load_model
    from .sweep import _time_steps
    from .train import resolve_device

    missing = [r for r in runs if book.eager_step(r) is None]
    if not missing:
        return
    import torch

    by_rank = sorted({r.lora.rank: r for r in missing}.items())
    model, _ = load_model(missing[0].model.name, resolve_device(missing[0])[1])
    with torch.random.fork_rng():  # the measurement must not move the runs' random streams
        for run in {by_rank[0][1].run_id: by_rank[0][1], by_rank[-1][1].run_id: by_rank[-1][1]}.values():
            seconds = _time_steps(run, model) / run.train.grad_accum
            book.eager.setdefault(_steps_key(run), {})[str(run.lora.rank)] = seconds
    book.save()


def _group_saving(runs: list["RunSpec"], key: str, book: CostBook) -> tuple[float, float, str]:
    """(predicted seconds saved, eager seconds) of compiling ``runs`` together, and the basis."""
    _measure_eager(runs, book)
    eager = [book.eager_step(r) for r in runs]
    steps = [r.train.max_steps * r.train.grad_accum for r in runs]
    compiled = book.compiled.get(key)
    if compiled is None:
        compiled = max(eager) / PRIOR_SPEEDUP  # padded to the largest rank
    warm = _warm_marker(key).exists()
    cost = (book.warm if warm else book.cold).get(key)
    basis = "measured" if cost is not None and key in book.compiled else "prior"
    if cost is None:
        cost = PRIOR_WARM_S if warm else PRIOR_COLD_S
    eager_total = sum(n * e for n, e in zip(steps, eager))
    saving = eager_total - sum(steps) * compiled - cost
    return saving, eager_total, f"{basis} costs, {'warm' if warm else 'cold'} cache"


def plan_compile(runs: Iterable["RunSpec"], book: CostBook | None = None) -> dict[str, CompilePlan]:
    """A :class:`CompilePlan` per run id for runs executed one after another in one process.

    Runs that share a compiled graph (same model, shapes, method, device) form a group padded to
    its largest rank. ``train.compile = true`` compiles, ``false`` does not, ``"auto"`` compiles a
    group when the predicted saving over its steps exceeds the compilation cost by ``MARGIN``
    of the eager time. Probes run compiled when training does (their shapes are fixed, so the
    forward graph is compiled once per group; see :func:`prepare_for_compile`).
    """
    runs = list(runs)
    book = book or CostBook.load()
    groups: dict[str, list] = {}
    for run in runs:
        groups.setdefault(_steps_key(run), []).append(run)
    plans: dict[str, CompilePlan] = {}
    for members in groups.values():
        wanted = [r for r in members if r.train.compile is not False]
        pad = max((r.lora.rank for r in wanted), default=None)
        key = group_key(members[0], pad or 0)
        auto = [r for r in wanted if r.train.compile == "auto"]
        decision, reason = True, "compile = true"
        if auto:
            saving, eager_total, basis = _group_saving(wanted, key, book)
            decision = saving > MARGIN * eager_total
            reason = (f"auto: predicted saving {saving / max(eager_total, 1e-9):+.0%} of the eager time "
                      f"over {len(wanted)} run(s) ({basis})")
        for run in members:
            on = run.train.compile is True or (run.train.compile == "auto" and decision)
            plans[run.run_id] = (CompilePlan(True, pad, True, key, reason) if on
                                 else CompilePlan(reason="compile = false" if run.train.compile is False
                                                  else reason))
    return plans


# --------------------------------------------------------------------------- the model


def _lora_pairs(model) -> Iterator[tuple[str, "torch.nn.Parameter", "torch.nn.Parameter"]]:
    """(name, A weight (r, d_in), B weight (d_out, r)) of every LoRA adapter in ``model``."""
    for name, module in model.named_modules():
        a, b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if a is None or b is None or not hasattr(a, "keys"):
            continue
        for adapter in a.keys():
            if adapter in b and hasattr(a[adapter], "weight"):
                yield f"{name}.{adapter}", a[adapter].weight, b[adapter].weight


def pad_lora(model, rank: int) -> dict[str, int]:
    """Pad every LoRA adapter of ``model`` in place to ``rank`` with zeros; return the true ranks.

    The parameters stay the same objects (their ``.data`` grows), so an optimiser or a method
    holding them sees the padded tensors. Padding is inert: see the module docstring.
    """
    import torch

    ranks = {}
    with torch.no_grad():
        for name, a, b in _lora_pairs(model):
            r = a.shape[0]
            ranks[name] = r
            if rank < r:
                raise ValueError(f"cannot pad LoRA {name} of rank {r} down to {rank}")
            if rank > r:
                a.data = torch.cat([a.data, a.data.new_zeros(rank - r, a.shape[1])], 0)
                b.data = torch.cat([b.data, b.data.new_zeros(b.shape[0], rank - r)], 1)
    return ranks


def unpad_lora(model, ranks: dict[str, int]) -> None:
    """Undo :func:`pad_lora`: slice each adapter back to its true rank (checks the pad is zero)."""
    import torch

    with torch.no_grad():
        for name, a, b in _lora_pairs(model):
            r = ranks[name]
            if a.shape[0] > r:
                if a.data[r:].any() or b.data[:, r:].any():
                    raise RuntimeError(f"LoRA {name}: the padding is no longer zero")
                a.data = a.data[:r].clone()
                b.data = b.data[:, :r].clone()


def _scaling_as_tensors(model) -> None:
    """LoRA scalings as 0-d tensors: their values become data, so ranks share one graph."""
    import torch

    for module in model.modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and hasattr(module, "lora_A"):
            for adapter, value in scaling.items():
                if not isinstance(value, torch.Tensor):
                    device = module.lora_A[adapter].weight.device if adapter in module.lora_A else None
                    scaling[adapter] = torch.tensor(float(value), device=device)


def _repeated_blocks(model) -> list:
    """The largest ``ModuleList`` whose members are all of one class (a transformer's layers)."""
    import torch

    best: list = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            if len({type(m) for m in module}) == 1:
                best = list(module)
    return best


def compile_regions(model) -> int:
    """Compile the repeated blocks of ``model`` in place (``Module.compile``); return how many.

    A model without repeated blocks is compiled whole. In-place compilation keeps every module
    and parameter where it was, so checkpoints, state dicts and PEFT's saving are unchanged.
    The training loss is compiled too (its own small region): fused, the log-softmax over the
    vocabulary and its backward cost about half as much as eager (~0.1 s of a SmolLM2 step).
    """
    use_toolkit_inductor_cache()
    blocks = _repeated_blocks(model)
    for block in blocks or [model]:
        block.compile()
    if blocks:
        _compile_loss(model)
    return len(blocks) or 1


def _compile_loss(model) -> None:
    """Give a transformers model a compiled copy of its own loss function, once."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(getattr(type(base), "loss_function", None), property):
        return  # not a transformers model: its loss is whatever its forward computes
    loss = base.loss_function
    if not getattr(loss, "_forgetting_laws_compiled", False):
        compiled = torch.compile(loss)
        compiled._forgetting_laws_compiled = True
        base.loss_function = compiled


def prepare_for_compile(model, plan: CompilePlan) -> dict[str, int]:
    """Pad, tensorise the scalings and compile ``model`` as ``plan`` says; return the true ranks."""
    ranks = pad_lora(model, plan.pad_rank) if plan.pad_rank else {}
    if plan.compile:
        _scaling_as_tensors(model)
        compile_regions(model)
    return ranks


@contextlib.contextmanager
def eager_probes(plan: CompilePlan) -> Iterator[None]:
    """Run the probes eagerly unless the plan compiles them too."""
    if plan.compile and not plan.probes:
        import torch

        with torch.compiler.set_stance("force_eager"):
            yield
    else:
        yield


# --------------------------------------------------------------------------- measurements


_COMPILED_HERE: set[str] = set()  # groups compiled in this process (later runs reuse the graph)


def steady_step(times: list[float]) -> float | None:
    """Median step time after the first two steps (compilation, allocator warm-up)."""
    rest = times[2:]
    return statistics.median(rest) if len(rest) >= 3 else None


def record(run: "RunSpec", plan: CompilePlan, times: list[float]) -> None:
    """Add what this run measured (its step times) to the :class:`CostBook`."""
    steady = steady_step(times)
    if steady is None:
        return
    book = CostBook.load()
    if not plan.compile:
        book.eager.setdefault(_steps_key(run), {})[str(run.lora.rank)] = steady
    else:
        book.compiled[plan.key] = steady
        if plan.key not in _COMPILED_HERE:  # this run paid the compilation in its first step
            first = times[0] - steady
            marker = _warm_marker(plan.key)
            (book.warm if marker.exists() else book.cold)[plan.key] = max(first, 0.0)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
    book.save()


def mark_compiled(plan: CompilePlan) -> None:
    """Note that this process holds the group's graph (call after :func:`record`)."""
    if plan.compile:
        _COMPILED_HERE.add(plan.key)
