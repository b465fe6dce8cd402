"""Forgetting and fine-tuning probes (Kalajdzievski 2024, section 3.1).

On the reference blocks (shape (R, T)):

- ``forget_loss`` L_f: cross-entropy of the fine-tuned model where the target of position t is
  the base model's greedy prediction at t (not the data token);
- ``ref_loss``: ordinary cross-entropy against the data;
- ``agreement``: fraction of positions where the fine-tuned argmax equals the base argmax;
- ``forget_kl`` (optional): mean per-token KL(p_base || p_ft), with the base distribution
  from the same model with its adapter disabled.

On the held-out blocks of the fine-tuning corpus: ``ft_loss`` L_ft, the cross-entropy.
All metrics use positions 0..T-2 (those whose next data token is inside the block), so the
three reference metrics average over the same positions.

The base targets depend only on (model, reference blocks): :func:`base_targets` computes them
once and caches them, so a probe costs one forward pass of the fine-tuned model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..cache import cache_dir

__all__ = ["ProbeData", "base_targets", "base_probe", "probe", "forget_probe", "lm_loss"]


@dataclass
class ProbeData:
    """Token blocks a probe reads: reference (R, T), its base targets (R, T-1), held-out (H, T)."""

    reference: torch.Tensor
    targets: torch.Tensor
    heldout: torch.Tensor


@torch.inference_mode()
def _argmax_next(model, blocks: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Greedy next-token predictions at positions 0..T-2: (R, T) -> (R, T-1)."""
    device = next(model.parameters()).device
    out = [model(input_ids=b.to(device)).logits[:, :-1].argmax(-1).cpu() for b in blocks.split(batch_size)]
    return torch.cat(out)


def base_targets(model, blocks: torch.Tensor, model_key: str, batch_size: int = 8,
                 use_cache: bool = True, precision: str = "float32") -> torch.Tensor:
    """The base model's greedy predictions on ``blocks``, cached on disk by (model, blocks, the
    ``precision`` they are computed in).

    ``model`` must be the base model (or a PEFT model whose adapter is inert or disabled).
    """
    digest = hashlib.sha1(blocks.numpy().tobytes()).hexdigest()[:16]
    tag = "" if precision == "float32" else f"-{precision}"
    path = cache_dir() / "targets" / f"{model_key}-{digest}{tag}.npy"
    if use_cache and path.exists():
        return torch.from_numpy(np.load(path))
    was_training = model.training
    model.eval()
    targets = _argmax_next(model, blocks, batch_size)
    model.train(was_training)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, targets.numpy())
        os.replace(tmp, path)
    return targets


def _nll_terms(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy from logits (B, T', V) and their logsumexp (B, T'): no log-softmax copy."""
    return (lse - logits.gather(-1, targets[..., None]).squeeze(-1)).sum()


@torch.inference_mode()
def lm_loss(model, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy of ``model`` on ``blocks`` (R, T) against the data."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for b in blocks.split(batch_size):
        b = b.to(device)
        logits = model(input_ids=b).logits[:, :-1].float()  # (B, T-1, V)
        total += _nll_terms(logits, torch.logsumexp(logits, -1), b[:, 1:]).item()
        count += b[:, 1:].numel()
    return total / count


def _kl_sum(model, ids: torch.Tensor, logp_ft: torch.Tensor) -> float:
    """Summed KL(p_base || p_ft) over positions, the base from the adapter-disabled model."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise TypeError("forget_kl needs a PEFT model (its adapter is disabled to get the base)")
    with disable():
        logp_base = F.log_softmax(model(input_ids=ids).logits[:, :-1].float(), dim=-1)
    return F.kl_div(logp_ft, logp_base, log_target=True, reduction="sum").item()


@torch.inference_mode()
def forget_probe(model, data: ProbeData, batch_size: int = 8, kl: bool = False) -> dict[str, float]:
    """``forget_loss``, ``ref_loss``, ``agreement`` (and ``forget_kl``) on the reference blocks."""
    device = next(model.parameters()).device
    sums = {"forget_loss": 0.0, "ref_loss": 0.0, "agreement": 0.0, "forget_kl": 0.0}
    count = 0
    for ids, tgt in zip(data.reference.split(batch_size), data.targets.split(batch_size)):
        ids, tgt = ids.to(device), tgt.to(device)
        logits = model(input_ids=ids).logits[:, :-1].float()  # (B, T-1, V)
        lse = torch.logsumexp(logits, -1)  # (B, T-1): one pass, no (B, T-1, V) log-softmax copy
        sums["forget_loss"] += _nll_terms(logits, lse, tgt).item()
        sums["ref_loss"] += _nll_terms(logits, lse, ids[:, 1:]).item()
        sums["agreement"] += (logits.argmax(-1) == tgt).sum().item()
        if kl:
            sums["forget_kl"] += _kl_sum(model, ids, logits - lse[..., None])
        count += tgt.numel()
    out = {k: v / count for k, v in sums.items()}
    if not kl:
        out["forget_kl"] = float("nan")
    return out


def probe(model, data: ProbeData, batch_size: int = 8, kl: bool = False) -> dict[str, float]:
    """All probe metrics of ``model`` (evaluated in eval mode, training mode restored after)."""
    was_training = model.training
    model.eval()
    try:
        metrics = forget_probe(model, data, batch_size, kl)
        metrics["ft_loss"] = lm_loss(model, data.heldout, batch_size)
    finally:
        model.train(was_training)
    return metrics


def base_probe(model, data: ProbeData, batch_size: int = 8, kl: bool = False,
               precision: str = "float32") -> dict[str, float]:
    """The probe of a model whose adapter is inert, cached: every run of a sweep shares step 0.

    Only valid when ``model`` computes exactly the base model (LoRA B = 0 at initialisation);
    the caller checks that. The cache key is the base targets' digest, which already depends
    on the model and the reference blocks, plus the held-out blocks and the ``precision`` the
    probe computes in.
    """
    h = hashlib.sha1(data.targets.numpy().tobytes())
    h.update(data.reference.numpy().tobytes())
    h.update(data.heldout.numpy().tobytes())
    if precision != "float32":
        h.update(precision.encode())
    path = cache_dir() / "base_probes" / f"{h.hexdigest()[:20]}-kl{int(kl)}.json"
    if path.exists():
        return json.loads(path.read_text())
    metrics = probe(model, data, batch_size, kl)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(metrics))
    os.replace(tmp, path)
    return metrics
