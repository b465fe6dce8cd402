"""Compiled training: one switch (``[train] compile``) and one context (:func:`compiled`).

``compile = true`` compiles, ``false`` does not, ``"auto"`` compiles on CUDA and not on a CPU:
there a LoRA step is matmul-bound (``aten::mm`` is 76-80% of a compiled step on a 2-core EPYC)
and compiling, which fuses only what lies between the matmuls, bought 0.98-1.02x on a whole
sweep. What makes compiling cheap where it pays:

- **Regional compilation**: the decoder layers of a transformer are one class at one shape, so
  compiling them compiles one graph that every layer reuses; the loss is compiled too (a fused
  log-softmax over the vocabulary). Shapes are static (``dynamic=False``), so the probes' batch
  and the training batch each get their own graph and the cache key does not depend on which
  came first.
- **One graph per sweep**: dynamo's cache belongs to the code, not to the module instance, so
  the next run of a sweep (a fresh copy of the model with a new adapter) reuses the graph when
  its shapes match. Ranks differ in shape, so every compiled run of a sweep is padded to the
  sweep's largest rank (:func:`pad_lora`; :func:`pad_ranks` chooses it) and the rsLoRA scaling
  becomes a tensor (its value is data, not a guard). Inductor's on-disk cache lives in the
  toolkit's cache, so a repeated or resumed sweep compiles from disk.

Why the padding is inert: pad LoRA's A (r x d_in) with zero rows and B (d_out x r) with zero
columns to rank R. Then BA is unchanged; the padded rows of A get the gradient B_pad^T g = 0 and
the padded columns of B get g (A_pad x)^T = 0, so Adam's moments, its update, weight decay and
the clipped gradient norm leave them at exactly zero through training. Results change only by
floating-point summation order (``tests/test_compiling.py``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..cache import cache_dir

__all__ = ["wants_compile", "pad_ranks", "compiled", "pad_lora", "unpad_lora", "pad_copies", "unpad_copies",
           "compile_regions", "use_toolkit_inductor_cache"]

#: Graphs dynamo may keep per compiled function. One process compiles the layer once per
#: (method, padded rank, batch shape), three graphs each (the first layer, whose input needs no
#: grad, the others, and the probes under no_grad); at dynamo's default of 8 a third group would
#: silently run eager.
RECOMPILE_LIMIT = 64


def wants_compile(compile: bool | str, device_type: str) -> bool:
    """Whether a run compiles: ``true``/``false`` as given, ``"auto"`` on CUDA only."""
    return compile is True or (compile == "auto" and device_type == "cuda")


def pad_ranks(runs: Iterable) -> dict[str, int]:
    """The rank each compiled run of a sweep pads its LoRA to: the largest rank of the runs that
    share its model, method and target modules, so they share one compiled graph."""
    from .setup import resolve_device

    runs = [r for r in runs if wants_compile(r.train.compile, resolve_device(r)[0].type)]
    family = lambda r: (r.model.name, r.method.name, str(r.lora.target_modules))  # noqa: E731
    largest: dict[tuple, int] = {}
    for run in runs:
        largest[family(run)] = max(largest.get(family(run), 0), run.lora.rank)
    return {run.run_id: largest[family(run)] for run in runs}


def use_toolkit_inductor_cache() -> Path:
    """Point inductor's on-disk cache into the toolkit's cache unless the user chose a place."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


# --------------------------------------------------------------------------- padding


def _lora_pairs(model) -> Iterator[tuple[str, object, object]]:
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


def pad_copies(copies: Sequence[dict], rank: int) -> list[dict[str, tuple]]:
    """Pad tensors kept in the LoRA parameters' shapes, keyed by parameter name (a method's
    :meth:`~forgetting_laws.measure.methods.base.Method.lora_copies`), as :func:`pad_lora` pads the
    parameters: ``lora_A`` (r, d_in) with zero rows, ``lora_B`` (d_out, r) with zero columns. The
    dicts are updated in place; returns each tensor's true shape."""
    import torch

    shapes = []
    for copy in copies:
        shapes.append({n: tuple(t.shape) for n, t in copy.items()})
        for name, t in copy.items():
            dim = 0 if "lora_A" in name else 1 if "lora_B" in name else None
            if dim is not None and t.shape[dim] < rank:
                pad = list(t.shape)
                pad[dim] = rank - t.shape[dim]
                copy[name] = torch.cat([t, t.new_zeros(pad)], dim)
    return shapes


def unpad_copies(copies: Sequence[dict], shapes: list[dict[str, tuple]]) -> None:
    """Undo :func:`pad_copies` (checks the pad is still zero)."""
    for copy, true in zip(copies, shapes):
        for name, t in copy.items():
            if tuple(t.shape) != true[name]:
                kept = t[tuple(slice(0, k) for k in true[name])]
                if t.count_nonzero() != kept.count_nonzero():
                    raise RuntimeError(f"LoRA copy {name}: the padding is no longer zero")
                copy[name] = kept.clone()


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


# --------------------------------------------------------------------------- compiling


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
    """
    import torch

    use_toolkit_inductor_cache()
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
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
        compiled_loss = torch.compile(loss, dynamic=False)
        compiled_loss._forgetting_laws_compiled = True
        base.loss_function = compiled_loss


@contextlib.contextmanager
def compiled(model, pad_rank: int | None, copies: Sequence[dict] = ()) -> Iterator[dict[str, int]]:
    """Train ``model`` compiled inside this context: pad its LoRA to ``pad_rank``, compile it,
    and on leaving unpad it to its own rank (so the saved adapter is the run's own). ``copies``
    (the method's :meth:`~forgetting_laws.measure.methods.base.Method.lora_copies`, such as
    I-LoRA's slow adapter) are padded and unpadded with it, so they keep the parameters' shapes.
    Yields the true ranks. With ``pad_rank=None`` nothing happens (an eager run)."""
    if pad_rank is None:
        yield {}
        return
    ranks = pad_lora(model, pad_rank)
    shapes = pad_copies(copies, pad_rank)
    _scaling_as_tensors(model)
    compile_regions(model)
    try:
        yield ranks
    finally:
        unpad_lora(model, ranks)
        unpad_copies(copies, shapes)
