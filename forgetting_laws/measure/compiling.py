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
PRIOR_WARM_S = 6.0          # the same from inductor's warm on-disk cache (2.9-5.3 s measured)
#: Auto compiles only when the predicted saving exceeds this fraction of the eager time, so an
#: error in the estimate cannot make a sweep more than a few per cent slower.
MARGIN = 0.05
#: Graphs dynamo may keep per compiled function. A sweep compiles the layer once per group
#: (method, padded rank) in one process, three graphs each (the first layer, whose input needs
#: no grad, the others, and the probes under no_grad); at dynamo's default of 8 the third group
#: would silently run eager.
RECOMPILE_LIMIT = 64


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

    ``eager[steps_key][rank]``, ``compiled[group_key]`` and ``compiled_at[steps_key][pad]``
    are seconds per step; ``cold[group_key]`` / ``warm[group_key]`` seconds of compilation
    without / with inductor's on-disk cache; ``per_rank[steps_key]`` the work one LoRA rank adds
    to a step, as a fraction of the frozen model's (its parameters per rank over the frozen
    parameters: a step's matmul FLOPs are proportional to the parameters they touch).
    """

    eager: dict[str, dict[str, float]] = field(default_factory=dict)
    compiled: dict[str, float] = field(default_factory=dict)
    cold: dict[str, float] = field(default_factory=dict)
    warm: dict[str, float] = field(default_factory=dict)
    compiled_at: dict[str, dict[str, float]] = field(default_factory=dict)
    per_rank: dict[str, float] = field(default_factory=dict)

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
        return self.eager_at(_steps_key(run), run.lora.rank)

    def eager_at(self, family: str, rank: int) -> float | None:
        """Seconds per eager step of ``family`` (a ``_steps_key``) at ``rank``.

        Between measured ranks the time is interpolated linearly (LoRA's FLOPs are linear in
        the rank); beyond them it is extrapolated from the nearest measured rank with the
        steeper of the measured slope and the FLOPs' slope (``per_rank``), so one measured
        rank (a sweep's first run) does not make rank 1024 look as cheap as rank 1.
        """
        return self._at(self.eager.get(family, {}), rank, self.per_rank.get(family, 0.0))

    def compiled_step(self, family: str, key: str, pad: int) -> float | None:
        """Seconds per compiled step of group ``key`` (``family`` padded to ``pad``), if known.

        Measured for this group, or scaled from the family's nearest measured pad (the
        compiled step at another width is a better guide than a prior speed-up).
        """
        if key in self.compiled:
            return self.compiled[key]
        return self._at(self.compiled_at.get(family, {}), pad, self.per_rank.get(family, 0.0))

    @staticmethod
    def _at(measured: dict[str, float], rank: int, per_rank: float) -> float | None:
        by_rank = {int(r): s for r, s in measured.items()}
        if not by_rank:
            return None
        if rank in by_rank:
            return by_rank[rank]
        ranks = sorted(by_rank)
        lo = max([r for r in ranks if r < rank], default=None)
        hi = min([r for r in ranks if r > rank], default=None)
        if lo is not None and hi is not None:
            w = (rank - lo) / (hi - lo)
            return (1 - w) * by_rank[lo] + w * by_rank[hi]
        near = lo if lo is not None else hi
        slope = by_rank[near] * per_rank / (1 + per_rank * near)  # seconds per rank, from FLOPs
        if len(ranks) >= 2:
            a, b = (ranks[-2], ranks[-1]) if lo is not None else (ranks[0], ranks[1])
            slope = max(slope, (by_rank[b] - by_rank[a]) / (b - a))
        return max(by_rank[near] + slope * (rank - near), 0.0)


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


def _steps(run: "RunSpec") -> int:
    return run.train.max_steps * run.train.grad_accum


def _compile_cost(book: CostBook, key: str, family: str) -> tuple[float, bool, bool]:
    """(seconds, warm cache?, measured?) of compiling group ``key``.

    A group not compiled yet on this machine costs what the last cold compilation of its family
    (same model, shapes, method) cost: the cost depends on the layer's code, not its width.
    """
    if key in _COMPILED_HERE:
        return 0.0, True, True  # this process already holds the graph
    warm = _warm_marker(key).exists()
    costs = book.warm if warm else book.cold
    for known in (key, family):
        if known in costs:
            return costs[known], warm, True
    return (PRIOR_WARM_S if warm else PRIOR_COLD_S), warm, False


@dataclass
class _Segment:
    """Runs of consecutive ranks compiled together (padded to ``pad``), or run eagerly."""

    runs: list
    compile: bool
    pad: int
    key: str
    seconds: float        # predicted wall time, compilation included
    eager_seconds: float  # predicted wall time without compiling
    basis: str

    @property
    def saving(self) -> float:
        return (self.eager_seconds - self.seconds) / max(self.eager_seconds, 1e-9)


def _segment(runs: list, book: CostBook, compile: bool) -> _Segment:
    """Predicted cost of ``runs`` (one family, sorted by rank) compiled together, or eager."""
    family, pad = _steps_key(runs[0]), max(r.lora.rank for r in runs)
    key = group_key(runs[0], pad)
    eager = sum(_steps(r) * book.eager_at(family, r.lora.rank) for r in runs)
    if not compile:
        return _Segment(runs, False, pad, key, eager, eager, "")
    step = book.compiled_step(family, key, pad)
    measured_step = step is not None
    if step is None:
        step = book.eager_at(family, pad) / PRIOR_SPEEDUP
    cost, warm, measured_cost = _compile_cost(book, key, family)
    seconds = cost + sum(_steps(r) for r in runs) * step
    basis = (f"{'measured' if measured_step and measured_cost else 'prior'} costs, "
             f"{'warm' if warm else 'cold'} cache")
    return _Segment(runs, True, pad, key, seconds, eager, basis)


def _partition(runs: list, book: CostBook) -> list[_Segment]:
    """The fastest split of one family's runs into segments of consecutive ranks.

    Each segment is compiled once, padded to its largest rank, or (only if all of its runs are
    ``"auto"``) runs eagerly. Padding a small rank to a large one costs its LoRA FLOPs, a new
    segment costs a compilation: dynamic programming over the sorted ranks weighs the two.
    A compiled segment must also beat its eager time by ``MARGIN``, so that an error in the
    estimates cannot make a sweep more than a few per cent slower.
    """
    ranks = sorted({r.lora.rank for r in runs})
    at = {rank: [r for r in runs if r.lora.rank == rank] for rank in ranks}
    best: list[tuple[float, list[_Segment]]] = [(0.0, [])]
    for j in range(len(ranks)):
        options = []
        for i in range(j + 1):
            members = [r for rank in ranks[i:j + 1] for r in at[rank]]
            compiled = _segment(members, book, True)
            options.append((best[i][0] + compiled.seconds + MARGIN * compiled.eager_seconds,
                            best[i][1] + [compiled]))
            if all(r.train.compile == "auto" for r in members):
                eager = _segment(members, book, False)
                options.append((best[i][0] + eager.seconds, best[i][1] + [eager]))
        best.append(min(options, key=lambda option: option[0]))
    return best[-1][1]


def _reason(segment: _Segment, book: CostBook) -> str:
    if segment.compile:
        ranks = sorted({r.lora.rank for r in segment.runs})
        return (f"auto: ranks {ranks} compiled together, padded to {segment.pad}: predicted saving "
                f"{segment.saving:+.0%} of their eager time ({segment.basis})")
    alone = _segment(segment.runs, book, True)
    return (f"auto: eager; compiling would give a predicted saving of {alone.saving:+.0%} of the "
            f"eager time, under the {MARGIN:.0%} it needs ({alone.basis})")


def plan_compile(runs: Iterable["RunSpec"], book: CostBook | None = None) -> dict[str, CompilePlan]:
    """A :class:`CompilePlan` per run id for runs executed one after another in one process.

    Runs that can share a compiled graph (same model, shapes, method, device) form a family.
    ``train.compile = true`` compiles, ``false`` does not. Without ``"auto"`` runs a family is
    compiled once, padded to its largest rank. With them, the family is split into segments of
    consecutive ranks (:func:`_partition`), each compiled once padded to its largest rank or
    left eager, whichever the measured (or prior) step times and compilation costs predict is
    fastest. A family never timed eagerly on this machine runs eagerly: executors plan again
    before each run (:func:`plan_compile` on the runs still to do), so only the first run of a
    sweep pays for the measurement, and a graph this process already holds costs nothing.
    Probes run compiled when training does (their shapes are fixed, so the forward
    graph is compiled once per segment; see :func:`prepare_for_compile`).
    """
    runs = list(runs)
    book = book or CostBook.load()
    families: dict[str, list] = {}
    for run in runs:
        families.setdefault(_steps_key(run), []).append(run)
    plans: dict[str, CompilePlan] = {}
    for members in families.values():
        for run in members:
            if run.train.compile is False:
                plans[run.run_id] = CompilePlan(reason="compile = false")
        wanted = [r for r in members if r.train.compile is not False]
        if not wanted:
            continue
        if not any(r.train.compile == "auto" for r in wanted):
            pad = max(r.lora.rank for r in wanted)
            key = group_key(wanted[0], pad)
            plans.update({r.run_id: CompilePlan(True, pad, True, key, "compile = true") for r in wanted})
            continue
        if any(book.eager_step(r) is None for r in wanted if r.train.compile == "auto"):
            # nothing to weigh yet: a short calibration misjudges a step that needs several
            # steps to warm up (by up to 30% on SmolLM2), so the first run measures it instead
            # and the executor plans the rest with it (plan again before each run)
            for run in wanted:
                plans[run.run_id] = (CompilePlan(True, run.lora.rank, True, group_key(run, run.lora.rank),
                                                 "compile = true") if run.train.compile is True else
                                     CompilePlan(reason="auto: eager until this machine has timed an eager "
                                                        "step of this model and shapes (this run does)"))
            continue
        for segment in _partition(wanted, book):
            reason = _reason(segment, book)
            for run in segment.runs:
                if segment.compile:
                    why = reason if run.train.compile == "auto" else "compile = true"
                    plans[run.run_id] = CompilePlan(True, segment.pad, True, segment.key, why)
                else:
                    plans[run.run_id] = CompilePlan(reason=reason)
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

    Shapes are static (``dynamic=False``): a layer sees the probes' batch and the training
    batch, and dynamo's automatic dynamic shapes would otherwise recompile whichever came second
    with a symbolic batch, a slower graph whose form (and so inductor's cache key) depends on
    which came first, so a repeated sweep that skips a cached probe missed the disk cache.

    A model without repeated blocks is compiled whole. In-place compilation keeps every module
    and parameter where it was, so checkpoints, state dicts and PEFT's saving are unchanged.
    The training loss is compiled too (its own small region): fused, the log-softmax over the
    vocabulary and its backward cost about half as much as eager (~0.1 s of a SmolLM2 step).
    """
    import torch

    use_toolkit_inductor_cache()
    limit = torch._dynamo.config
    limit.recompile_limit = max(limit.recompile_limit, RECOMPILE_LIMIT)
    blocks = _repeated_blocks(model)
    for block in blocks or [model]:
        block.compile(dynamic=False)
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
        compiled = torch.compile(loss, dynamic=False)
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


def record(run: "RunSpec", plan: CompilePlan, times: list[float], per_rank: float | None = None) -> None:
    """Add what this run measured (its step times) to the :class:`CostBook`.

    ``per_rank`` is the work one LoRA rank adds to a step, relative to the frozen model
    (:attr:`CostBook.per_rank`).
    """
    steady = steady_step(times)
    if steady is None:
        return
    book = CostBook.load()
    family = _steps_key(run)
    if per_rank is not None:
        book.per_rank[family] = per_rank
    if not plan.compile:
        book.eager.setdefault(family, {})[str(run.lora.rank)] = steady
    else:
        book.compiled[plan.key] = steady
        book.compiled_at.setdefault(family, {})[str(plan.pad_rank or run.lora.rank)] = steady
        if plan.key not in _COMPILED_HERE:  # this run paid the compilation in its first step
            first = times[0] - steady
            marker = _warm_marker(plan.key)
            costs = book.warm if marker.exists() else book.cold
            costs[plan.key] = costs[_steps_key(run)] = max(first, 0.0)  # the family's latest too
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
    book.save()


def mark_compiled(plan: CompilePlan) -> None:
    """Note that this process holds the group's graph (call after :func:`record`)."""
    if plan.compile:
        _COMPILED_HERE.add(plan.key)
