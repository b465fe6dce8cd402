r"""The geometry of forgetting: mode connectivity between LoRA adapters and sharpness around one.

Two parameter spaces of a PEFT LoRA model (:class:`LoraSpace`, :class:`DeltaWSpace`):

- **LoRA space**: the coordinates are the adapter's A and B matrices (every LoRA module);
- **Delta W space**: the coordinates are the merged updates :math:`\Delta W = s\,BA` of every
  LoRA module (s the LoRA scale); the model computed is the base model with weights
  :math:`W_0 + \Delta W` and its adapter disabled.

**Mode connectivity** (Ren et al. 2024): losses along the linear path
:math:`\theta(a) = (1-a)\,\theta_1 + a\,\theta_2` between two adapters, in either space, and the
barrier height (Frankle et al. 2020)

.. math:: B = \max_a \big[L(\theta(a)) - ((1-a) L(\theta_1) + a L(\theta_2))\big].

Interpolating A and B separately is not interpolating the update: :math:`\Delta W(a)` of the
LoRA-space path is quadratic in a, the Delta-W path is linear in the update.

**Sharpness** (Li et al. 2018, 2024): losses along random Gaussian directions normalised per
filter (each row of a direction tensor rescaled to the norm of the same row of the weights it
perturbs, :func:`filter_normalized`); the mean loss increase at radius eps over K directions
and its symmetric, curvature-only form (:func:`eps_sharpness`); the worst case SAM sees, by a few steps of projected gradient ascent in
an L2 ball of radius rho (:func:`ascent_sharpness`); the Hessian trace by Hutchinson's estimator
(:func:`hutchinson_trace`). The functions take any ``loss_fn(theta) -> scalar tensor`` over a
dict of tensors, so they apply to a toy objective as well as to a language model
(:meth:`LoraSpace.loss_fn`).

Example
-------
>>> model, spec = load_adapter("cl-out/adapters/lora-r8-.../task1-lee-news")  # doctest: +SKIP
>>> space = LoraSpace(model)                                                    # doctest: +SKIP
>>> eps_sharpness(space.loss_fn(blocks), space.point(), eps=0.05, n_directions=8)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError

__all__ = ["LoraSpace", "DeltaWSpace", "make_space", "load_adapter", "LoadedAdapter", "load_second_adapter",
           "linear_path", "barriers", "connectivity", "ConnectivityResult", "filter_normalized",
           "random_direction", "curve_1d", "surface_2d", "eps_sharpness", "ascent_sharpness",
           "hutchinson_trace", "sharpness_report", "sweep_sharpness", "rank_correlation", "eval_functions", "SPACES",
           "connect_adapters", "sharpness_study", "SharpnessStudy"]

Theta = dict[str, torch.Tensor]
LossFn = Callable[[Theta], torch.Tensor]
SPACES = ("lora", "delta_w")


def _lora_modules(model, adapter: str = "default") -> dict[str, object]:
    """Module name -> LoRA layer, for every layer that holds ``adapter``."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}


# --------------------------------------------------------------------------- spaces


class LoraSpace:
    """Coordinates: every LoRA A and B matrix of the model's ``default`` adapter (parameter names)."""

    kind = "lora"

    def __init__(self, model):
        self.model = model
        self.params = {n: p for n, p in model.named_parameters() if ".lora_A.default." in n or ".lora_B.default." in n}
        if not self.params:
            raise ValueError("the model has no LoRA parameters of a 'default' adapter")

    def point(self) -> Theta:
        """The current coordinates (copies)."""
        return {n: p.detach().clone() for n, p in self.params.items()}

    def reference(self, theta: Theta) -> Theta:
        """The weights a perturbation of ``theta`` perturbs (for filter normalisation): A and B."""
        return theta

    @contextlib.contextmanager
    def at(self, theta: Theta) -> Iterator[object]:
        """The model with coordinates ``theta``, written in place and restored exactly after."""
        saved = self.point()
        try:
            with torch.no_grad():
                for n, t in theta.items():
                    self.params[n].copy_(t)
            yield self.model
        finally:
            with torch.no_grad():
                for n, t in saved.items():
                    self.params[n].copy_(t)

    def forward(self, theta: Theta, input_ids: torch.Tensor):
        """Differentiable forward pass at ``theta`` (``torch.func.functional_call``), labels = inputs."""
        from torch.func import functional_call

        return functional_call(self.model, theta, args=(), kwargs={"input_ids": input_ids, "labels": input_ids},
                               strict=False)

    def loss_fn(self, blocks: torch.Tensor, batch_size: int = 8) -> LossFn:
        """``theta -> mean next-token cross-entropy on blocks (N, T)``, differentiable in theta."""
        device = next(self.model.parameters()).device

        def loss(theta: Theta) -> torch.Tensor:
            total = 0.0
            for b in blocks.split(batch_size):
                total = total + self.forward(theta, b.to(device)).loss * len(b)  # equal tokens per block
            return total / len(blocks)

        return loss


class DeltaWSpace(LoraSpace):
    """Coordinates: the merged update Delta W = s B A of every LoRA module (keyed by the name of
    the base weight it adds to); the model is the base model with ``W0 + Delta W``, adapter off."""

    kind = "delta_w"

    def __init__(self, model):
        self.model = model
        self.modules = _lora_modules(model)
        if not self.modules:
            raise ValueError("the model has no LoRA layers of a 'default' adapter")
        self.params = {f"{n}.base_layer.weight": m.base_layer.weight for n, m in self.modules.items()}

    def point(self) -> Theta:
        with torch.no_grad():
            return {f"{n}.base_layer.weight": m.get_delta_weight("default").detach().clone()
                    for n, m in self.modules.items()}

    def reference(self, theta: Theta) -> Theta:
        """The merged weights ``W0 + Delta W``: a direction's rows get the norms of their rows."""
        return {n: self.params[n].detach() + t for n, t in theta.items()}

    @contextlib.contextmanager
    def at(self, theta: Theta) -> Iterator[object]:
        saved = {n: p.detach().clone() for n, p in self.params.items()}
        try:
            with torch.no_grad():
                for n, t in theta.items():
                    self.params[n].add_(t)  # W0 + Delta W, in the order a merge computes it
            with self.model.disable_adapter():
                yield self.model
        finally:
            with torch.no_grad():
                for n, t in saved.items():
                    self.params[n].copy_(t)

    def forward(self, theta: Theta, input_ids: torch.Tensor):
        from torch.func import functional_call

        weights = {n: self.params[n] + t for n, t in theta.items()}
        with self.model.disable_adapter():
            return functional_call(self.model, weights, args=(),
                                   kwargs={"input_ids": input_ids, "labels": input_ids}, strict=False)


def make_space(model, kind: str) -> LoraSpace:
    """The space ``kind`` (``"lora"`` or ``"delta_w"``) of a PEFT LoRA model."""
    if kind not in SPACES:
        raise ConfigError(f"space = {kind!r}; use one of {', '.join(SPACES)}")
    return LoraSpace(model) if kind == "lora" else DeltaWSpace(model)


# --------------------------------------------------------------------------- adapters


@dataclass
class LoadedAdapter:
    """A PEFT model with a saved adapter, its tokenizer, run spec and base-model fingerprint."""

    model: object
    tokenizer: object
    spec: object
    key: str

    def blocks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train, held-out, reference) blocks of the adapter's run, as the run split them."""
        from .setup import load_data

        data = load_data(self.spec, self.tokenizer, self.key)[0]
        return data.train, data.heldout, data.reference

    def probe_data(self, batch_size: int = 8):
        """The forgetting probe's data (reference blocks and the base model's targets)."""
        from .probes import ProbeData, base_targets

        _, heldout, ref = self.blocks()
        ref_t = torch.from_numpy(ref)
        with self.model.disable_adapter():
            targets = base_targets(self.model, ref_t, self.key, batch_size)
        return ProbeData(ref_t, targets, torch.from_numpy(heldout))


def load_adapter(path: str | Path) -> LoadedAdapter:
    """Load an adapter folder written by ``continual`` or by a sweep with ``[train] save_adapter =
    true`` onto the base model named in its saved spec (model, dtype, attention and device as
    that spec says; landscape analyses evaluate eagerly: ``train.compile`` applies to training)."""
    from peft import PeftModel

    from .setup import load_base, resolve_device
    from .train import adapter_spec

    spec = adapter_spec(path)
    device, dtype = resolve_device(spec)
    base, tok, key = load_base(spec, dtype)
    model = PeftModel.from_pretrained(base, str(path)).to(device)
    model.eval()
    return LoadedAdapter(model, tok, spec, key)


def load_second_adapter(model, path: str | Path) -> dict[str, Theta]:
    """Coordinates of another adapter in each space of ``model`` (LoRA space only if its shapes match)."""
    from peft import PeftModel

    assert isinstance(model, PeftModel)
    model.load_adapter(str(path), adapter_name="other")
    try:
        mods = _lora_modules(model, "other")
        if set(mods) != set(_lora_modules(model)):
            raise ConfigError(f"adapter {str(path)!r} targets other modules than the first adapter; "
                              "the two must adapt the same modules")
        with torch.no_grad():
            out = {"delta_w": {f"{n}.base_layer.weight": m.get_delta_weight("other").detach().clone()
                               for n, m in mods.items()}}
        lora = {n.replace(".other.", ".default."): p.detach().clone() for n, p in model.named_parameters()
                if ".lora_A.other." in n or ".lora_B.other." in n}
        first = LoraSpace(model).params
        if all(n in first and first[n].shape == t.shape for n, t in lora.items()) and len(lora) == len(first):
            out["lora"] = lora
    finally:
        model.delete_adapter("other")
        model.set_adapter("default")
    return out


def eval_functions(blocks: dict[str, torch.Tensor], probe_data=None, batch_size: int = 8) -> dict[str, Callable]:
    """``name -> f(model) -> float``: the held-out loss on each block set (``probes.lm_loss``) and,
    with ``probe_data``, the forgetting loss on the reference (``probes.forget_probe``)."""
    from .probes import forget_probe, lm_loss

    out: dict[str, Callable] = {name: (lambda m, b=b: lm_loss(m, b, batch_size)) for name, b in blocks.items()}
    if probe_data is not None:
        out["forget_loss (reference)"] = lambda m: forget_probe(m, probe_data, batch_size)["forget_loss"]
    return out


# --------------------------------------------------------------------------- mode connectivity


def linear_path(space: LoraSpace, theta1: Theta, theta2: Theta, evals: dict[str, Callable],
                alphas: Sequence[float] = tuple(np.linspace(0, 1, 11))) -> pd.DataFrame:
    """Losses along ``theta(a) = (1-a) theta1 + a theta2``: columns space, alpha, eval, loss.

    At a = 0 and a = 1 the coordinates are ``theta1`` and ``theta2`` exactly (``1 * t1 + 0 * t2``),
    so the end points are the two adapters' losses (in Delta W space: the merged adapters').
    """
    rows = []
    for a in alphas:
        theta = {n: (1.0 - a) * theta1[n] + a * theta2[n] for n in theta1}
        with space.at(theta) as model:
            rows += [{"space": space.kind, "alpha": float(a), "eval": name, "loss": f(model)}
                     for name, f in evals.items()]
    return pd.DataFrame(rows)


def barriers(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (space, eval): the barrier max_a [L(a) - ((1-a) L(0) + a L(1))] and where it peaks, the
    valley min_a of the same difference (< 0: the path dips below the chord, a point between the
    adapters beats both) and where, the end-point losses and the lowest loss on the path.
    Needs a = 0 and a = 1 in ``curves``."""
    out = []
    for (space, name), g in curves.groupby(["space", "eval"], sort=False):
        g = g.sort_values("alpha")
        a, L = g.alpha.to_numpy(), g.loss.to_numpy()
        l0, l1 = L[a == 0.0][0], L[a == 1.0][0]
        excess = L - ((1 - a) * l0 + a * l1)
        k, j = int(np.argmax(excess)), int(np.argmin(excess))
        out.append({"space": space, "eval": name, "loss_at_0": l0, "loss_at_1": l1, "barrier": float(excess[k]),
                    "alpha_at_max": float(a[k]), "valley": float(excess[j]), "alpha_at_min": float(a[j]),
                    "max_loss": float(L.max()), "min_loss": float(L.min())})
    return pd.DataFrame(out)


@dataclass
class ConnectivityResult:
    """Curves (space, alpha, eval, loss) and barriers of a linear path between two adapters."""

    curves: pd.DataFrame
    barriers: pd.DataFrame



def connectivity(model, theta: dict[str, tuple[Theta, Theta]], evals: dict[str, Callable],
                 alphas: Sequence[float] = tuple(np.linspace(0, 1, 11))) -> ConnectivityResult:
    """Linear paths between two adapters in every space of ``theta`` (``space -> (theta1, theta2)``)."""
    curves = pd.concat([linear_path(make_space(model, kind), t1, t2, evals, alphas)
                        for kind, (t1, t2) in theta.items()], ignore_index=True)
    return ConnectivityResult(curves, barriers(curves))


def connect_adapters(path1: str | Path, path2: str | Path, points: int = 11, n_blocks: int = 8,
                     spaces: Sequence[str] = SPACES, reference: bool = True) -> tuple[ConnectivityResult, list[str]]:
    """The linear path between two saved adapters on one base model, in each of ``spaces``.

    Evaluated on ``n_blocks`` held-out blocks of each adapter's fine-tuning corpus and (with
    ``reference``) the forgetting loss on the first adapter's reference corpus. Returns the result
    and notes (a space left out because the adapters' LoRA shapes differ).
    """
    first, second = load_adapter(path1), load_adapter(path2)
    if second.spec.model.name != first.spec.model.name:
        raise ConfigError(f"the adapters sit on different base models ({first.spec.model.name!r}, "
                          f"{second.spec.model.name!r}); connectivity needs one base model")
    held = {}
    for loaded in (first, second):
        held.setdefault(f"held-out {loaded.spec.data.dataset}", torch.from_numpy(loaded.blocks()[1][:n_blocks]))
    evals = eval_functions(held, first.probe_data() if reference else None)
    other = load_second_adapter(first.model, path2)
    theta = {k: (make_space(first.model, k).point(), other[k]) for k in spaces if k in other}
    notes = [f"no {k} path: the adapters' LoRA shapes differ (different ranks); Delta W space still works"
             for k in spaces if k not in theta]
    return connectivity(first.model, theta, evals, np.linspace(0, 1, points)), notes


# --------------------------------------------------------------------------- directions


def filter_normalized(direction: Theta, weights: Theta, eps: float = 1e-12) -> Theta:
    """Rescale each filter (row, the first axis) of every direction tensor to the norm of the same
    row of the weights it perturbs (Li et al. 2018). 1-D tensors (biases, norms) are zeroed, as
    Li et al. do; rows of zero weights get zero directions."""
    out = {}
    for n, d in direction.items():
        w = weights[n]
        if d.dim() < 2:
            out[n] = torch.zeros_like(d)
            continue
        dn = d.flatten(1).norm(dim=1).clamp_min(eps)  # (rows,)
        wn = w.flatten(1).norm(dim=1)
        out[n] = d * (wn / dn).view(-1, *([1] * (d.dim() - 1)))
    return out


def random_direction(space_reference: Theta, generator: torch.Generator) -> Theta:
    """A Gaussian direction over the tensors of ``space_reference``, filter-normalised to them."""
    d = {n: torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device) for n, w in space_reference.items()}
    return filter_normalized(d, space_reference)


def _shift(theta: Theta, *terms: tuple[float, Theta]) -> Theta:
    return {n: t + sum(c * d[n] for c, d in terms) for n, t in theta.items()}


@torch.no_grad()
def _value(loss_fn: LossFn, theta: Theta) -> float:
    return float(loss_fn(theta))


def _directions(reference: Theta, n: int, seed: int) -> list[Theta]:
    g = torch.Generator().manual_seed(seed)
    return [random_direction(reference, g) for _ in range(n)]


def curve_1d(loss_fn: LossFn, theta: Theta, reference: Theta, radii: Sequence[float], n_directions: int = 4,
             seed: int = 0) -> pd.DataFrame:
    """Loss along ``n_directions`` filter-normalised random directions: columns direction, radius, loss."""
    rows = []
    for k, d in enumerate(_directions(reference, n_directions, seed)):
        rows += [{"direction": k, "radius": float(r), "loss": _value(loss_fn, _shift(theta, (r, d)))} for r in radii]
    return pd.DataFrame(rows)


def surface_2d(loss_fn: LossFn, theta: Theta, reference: Theta, radii: Sequence[float], seed: int = 0) -> pd.DataFrame:
    """Loss on the plane of two filter-normalised random directions: columns x, y, loss."""
    d1, d2 = _directions(reference, 2, seed)
    return pd.DataFrame([{"x": float(x), "y": float(y), "loss": _value(loss_fn, _shift(theta, (x, d1), (y, d2)))}
                         for x in radii for y in radii])


# --------------------------------------------------------------------------- scalar sharpness


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), (float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan"))


def eps_sharpness(loss_fn: LossFn, theta: Theta, reference: Theta, eps: float = 0.05, n_directions: int = 8,
                  seed: int = 0) -> dict[str, float]:
    r"""Mean loss increase at radius eps along K filter-normalised random directions, with standard errors.

    ``eps_sharpness`` is :math:`\frac1K \sum_k L(\theta + \epsilon d_k) - L(\theta)` (Li et al.'s
    measure). Away from an exact minimum its first-order term :math:`\epsilon\, g^\top d_k` adds
    noise of either sign; ``eps_curvature``, :math:`\frac1K \sum_k \tfrac12 [L(\theta + \epsilon d_k)
    + L(\theta - \epsilon d_k)] - L(\theta)`, cancels it and keeps the curvature,
    :math:`\tfrac12 \epsilon^2 d_k^\top H d_k` to third order (one more evaluation per direction).
    """
    l0 = _value(loss_fn, theta)
    plus, minus = [], []
    for d in _directions(reference, n_directions, seed):
        plus.append(_value(loss_fn, _shift(theta, (eps, d))) - l0)
        minus.append(_value(loss_fn, _shift(theta, (-eps, d))) - l0)
    rise, rise_se = _mean_se(np.array(plus))
    curv, curv_se = _mean_se((np.array(plus) + np.array(minus)) / 2)
    return {"eps_sharpness": rise, "eps_sharpness_se": rise_se, "eps_curvature": curv,
            "eps_curvature_se": curv_se, "loss": l0}


def _flat_norm(ts: Theta) -> torch.Tensor:
    return torch.sqrt(sum((t.float() ** 2).sum() for t in ts.values()))


def ascent_sharpness(loss_fn: LossFn, theta: Theta, rho: float = 0.05, steps: int = 5,
                     seed: int = 0) -> dict[str, float]:
    r"""Worst-case loss increase in the L2 ball of radius rho, as SAM sees it:
    :math:`\max_{\|e\| \le \rho} L(\theta + e) - L(\theta)`, by ``steps`` of projected normalised
    gradient ascent, :math:`e \leftarrow \Pi_\rho(e + \rho\, g / \|g\|)` (the first step is SAM's
    :math:`e = \rho g / \|g\|`); the best iterate counts. The ascent starts a random
    :math:`10^{-3}\rho` away from theta, so that it also leaves an exact minimum (g = 0 there)."""
    l0 = _value(loss_fn, theta)
    g0 = torch.Generator().manual_seed(seed)
    e = {n: torch.randn(t.shape, generator=g0, dtype=t.dtype).to(t.device) for n, t in theta.items()}
    scale = 1e-3 * rho / float(_flat_norm(e).clamp_min(1e-30))
    e = {n: t * scale for n, t in e.items()}
    best = 0.0
    for _ in range(steps):
        point = {n: (theta[n] + e[n]).detach().requires_grad_(True) for n in theta}
        g = dict(zip(point, torch.autograd.grad(loss_fn(point), list(point.values()))))
        gn = _flat_norm(g).clamp_min(1e-30)
        with torch.no_grad():
            e = {n: e[n] + rho * g[n] / gn for n in e}
            en = float(_flat_norm(e))
            if en > rho:
                e = {n: t * (rho / en) for n, t in e.items()}
        best = max(best, _value(loss_fn, _shift(theta, (1.0, e))) - l0)
    return {"ascent_sharpness": best, "rho": rho, "loss": l0}


def hutchinson_trace(loss_fn: LossFn, theta: Theta, n_samples: int = 32, seed: int = 0) -> dict[str, float]:
    r"""Hutchinson's estimate of the Hessian trace, :math:`\mathrm{tr} H \approx \frac1S \sum_s v_s^\top H v_s`
    with Rademacher :math:`v_s`; Hessian-vector products by double backpropagation (attention
    runs through PyTorch's math kernel, the fused CPU kernels have no second derivative)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        return _hutchinson(loss_fn, theta, n_samples, seed)


def _hutchinson(loss_fn: LossFn, theta: Theta, n_samples: int, seed: int) -> dict[str, float]:
    point = {n: t.detach().clone().requires_grad_(True) for n, t in theta.items()}
    grads = torch.autograd.grad(loss_fn(point), list(point.values()), create_graph=True)
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n_samples):
        vs = [(torch.randint(0, 2, t.shape, generator=g) * 2 - 1).to(t) for t in point.values()]
        hv = torch.autograd.grad(grads, list(point.values()), grad_outputs=vs, retain_graph=True)
        samples.append(float(sum((v * h).sum() for v, h in zip(vs, hv))))
    s = np.array(samples)
    return {"hessian_trace": float(s.mean()), "hessian_trace_se": float(s.std(ddof=1) / np.sqrt(len(s)))}


def sharpness_report(space: LoraSpace, blocks: torch.Tensor, eps: float = 0.05, n_directions: int = 8,
                     rho: float = 0.05, ascent_steps: int = 5, hutchinson: int = 0, seed: int = 0,
                     batch_size: int = 8) -> dict[str, float]:
    """The scalar measures of one adapter in one space, on ``blocks`` (N, T)."""
    loss_fn, theta = space.loss_fn(blocks, batch_size), space.point()
    out = {"space": space.kind, **eps_sharpness(loss_fn, theta, space.reference(theta), eps, n_directions, seed),
           "eps": eps}
    if ascent_steps:
        out.update({k: v for k, v in ascent_sharpness(loss_fn, theta, rho, ascent_steps, seed).items() if k != "loss"})
    if hutchinson:
        out.update(hutchinson_trace(loss_fn, theta, hutchinson, seed))
    return out


# --------------------------------------------------------------------------- sharpness against forgetting


@dataclass
class SharpnessStudy:
    """What :func:`sharpness_study` measures around one adapter: a row of scalar measures per
    space (``table``), 1-D curves and (optionally) 2-D surfaces per space."""

    table: pd.DataFrame
    curves: dict[str, pd.DataFrame]
    surfaces: dict[str, pd.DataFrame]
    n_blocks: int
    corpus: str


def sharpness_study(path: str | Path, spaces: Sequence[str] = SPACES, n_blocks: int = 8, radius: float = 1.0,
                    points: int = 11, curve_directions: int = 3, surface: int = 0, seed: int = 0,
                    **measures) -> SharpnessStudy:
    """Sharpness of a saved adapter on ``n_blocks`` of its training blocks, in each of ``spaces``:
    :func:`sharpness_report` (``measures`` are its keyword arguments), 1-D curves along
    ``curve_directions`` filter-normalised directions over [-radius, radius] and, with
    ``surface > 0``, a 2-D surface of ``surface`` x ``surface`` points."""
    loaded = load_adapter(path)
    blocks = torch.from_numpy(loaded.blocks()[0][:n_blocks])
    radii = np.linspace(-radius, radius, points)
    rows, curves, surfaces = [], {}, {}
    for kind in spaces:
        space = make_space(loaded.model, kind)
        rows.append(sharpness_report(space, blocks, seed=seed, **measures))
        loss_fn, theta = space.loss_fn(blocks), space.point()
        curves[kind] = curve_1d(loss_fn, theta, space.reference(theta), radii, curve_directions, seed)
        if surface:
            surfaces[kind] = surface_2d(loss_fn, theta, space.reference(theta), np.linspace(-radius, radius, surface),
                                        seed)
    return SharpnessStudy(pd.DataFrame(rows), curves, surfaces, len(blocks), loaded.spec.data.dataset)


def rank_correlation(x: Sequence[float], y: Sequence[float], bootstrap: int = 1000, level: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """Spearman's rho of x and y with a percentile bootstrap CI over the pairs (runs) and its p-value.

    Resamples with fewer than 3 distinct x or y values are dropped (rho is undefined there).
    """
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        raise ValueError(f"{len(x)} runs; a rank correlation needs at least 3")
    rho, p = stats.spearmanr(x, y)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        i = rng.integers(0, len(x), len(x))
        if len(np.unique(x[i])) > 2 and len(np.unique(y[i])) > 2:
            draws.append(stats.spearmanr(x[i], y[i])[0])
    lo, hi = (np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]) if draws else (np.nan, np.nan))
    return {"spearman_rho": float(rho), "p_value": float(p), "ci_lo": float(lo), "ci_hi": float(hi),
            "level": level, "n_runs": len(x), "bootstrap": len(draws)}


def sweep_sharpness(runs_dir: str | Path, space: str = "lora", n_blocks: int = 8, progress: bool = True,
                    **measures) -> pd.DataFrame:
    """Sharpness of every run of a sweep whose final adapter was kept (``[train] save_adapter``),
    with its forgetting: one row per run (run_id, method, rank, forgetting = final forget_loss -
    step-0 forget_loss, final ft_loss, and the measures of :func:`sharpness_report` on the first
    ``n_blocks`` training blocks of the run)."""
    from tqdm.auto import tqdm

    from ..store import adapter_path, load_runs

    runs = load_runs(runs_dir)
    rows = []
    todo = [(rid, g) for rid, g in runs.groupby("run_id", sort=True)
            if (adapter_path(runs_dir, rid) / "adapter_model.safetensors").is_file()]
    if not todo:
        raise FileNotFoundError(f"no adapters in {Path(runs_dir) / 'adapters'}: rerun the sweep with "
                                "[train] save_adapter = true (finished runs must be rerun into a new RUNS_DIR)")
    for rid, g in tqdm(todo, desc="sharpness", disable=not progress):
        g = g.sort_values("step")
        loaded = load_adapter(adapter_path(runs_dir, rid))
        train = torch.from_numpy(loaded.blocks()[0][:n_blocks])
        rep = sharpness_report(make_space(loaded.model, space), train, **measures)
        rows.append({"run_id": rid, "method": g.method.iloc[0], "rank": int(g["rank"].iloc[0]),
                     "step": int(g.step.iloc[-1]), "forgetting": float(g.forget_loss.iloc[-1] - g.forget_loss.iloc[0]),
                     "forget_loss": float(g.forget_loss.iloc[-1]), "ft_loss": float(g.ft_loss.iloc[-1]), **rep})
    return pd.DataFrame(rows)
