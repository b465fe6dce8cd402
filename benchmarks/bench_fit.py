"""Benchmark the fitting engine against the fits a user would otherwise write.

Run from the repository root (the data are vendored in ``tests/data/``)::

    python benchmarks/bench_fit.py            # Epoch baseline timed on 150 of 4,500 starts
    python benchmarks/bench_fit.py --full     # Epoch baseline from all 4,500 starts (~5 min)

Each part prints its ratio against a named baseline measured in the same run, the two sides
taking turns (ours, baseline, ours, baseline, ...) so a drift in the machine's speed hits both;
times are CPU seconds of this process, the median of the turns, BLAS single-threaded on both sides.

1. The Chinchilla fit (Huber on log residuals, delta 1e-3, Epoch's 240 points) against the
   Epoch-style fit: scipy L-BFGS-B with numerical gradients from each start of the 4,500-point
   grid. Goal: same or lower objective, >= 100x faster.
2. ``loss="mse"`` on the same points against plain variable-projection fitters over (alpha,
   beta): ``least_squares`` with the non-negative linear parameters (E, A, B) solved by NNLS
   inside the residual, (a) refined from each of the grid's 25 (alpha, beta) starts, best kept,
   and (b) refined from the best-scoring start only. Goal: >= 1x, at the same objective.
3. 1,000 bootstrap refits of the Chinchilla law. Goal: under 60 s on 2 cores.
4. Fit time against the number of points (1k, 10k, 100k synthetic). Goal: linear.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, minimize, nnls
from scipy.special import huber, logsumexp
from threadpoolctl import threadpool_limits

from forgetting_laws.analyse import laws
from forgetting_laws.analyse.fit import fit_arrays

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "chinchilla_epoch_svg_extracted.csv"
DELTA = 1e-3


def load_chinchilla() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epoch's points minus the 5 highest losses; D = FLOP / (6 N)."""
    df = pd.read_csv(DATA).sort_values("loss").iloc[:-5]
    N = df["Model Size"].to_numpy()
    return N, df["Training FLOP"].to_numpy() / (6 * N), df["loss"].to_numpy()


def cpu_time(fn, *args):
    """(CPU seconds, result) of one call."""
    t0 = time.process_time()
    out = fn(*args)
    return time.process_time() - t0, out


def turns(sides: dict, repeats: int) -> dict[str, tuple[float, object]]:
    """Run each side once per turn, ``repeats`` turns; (median seconds, last result) per side."""
    times = {name: [] for name in sides}
    last = {}
    for _ in range(repeats):
        for name, fn in sides.items():
            t, last[name] = cpu_time(fn)
            times[name].append(t)
    return {name: (float(np.median(times[name])), last[name]) for name in sides}


# ---------------------------------------------------------------- 1. Epoch-style multistart


def epoch_objective(x: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray) -> float:
    """Huber loss of log L = LSE(a - alpha log N, b - beta log D, e), as in Epoch's replication."""
    a, b, e, alpha, beta = x
    pred = logsumexp([a - alpha * logN, b - beta * logD, np.full_like(logN, e)], axis=0)
    return float(huber(DELTA, pred - logL).sum())


def epoch_grid() -> np.ndarray:
    """The 4,500 starts (a, b, e, alpha, beta) of Hoffmann et al. and Epoch."""
    axes = [np.arange(0, 25.1, 5), np.arange(0, 25.1, 5), np.arange(-1, 1.01, 0.5),
            np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5)]
    return np.array(np.meshgrid(*axes, indexing="ij")).reshape(5, -1).T


def epoch_fit(N, D, L, starts: np.ndarray) -> float:
    """Best objective of scipy L-BFGS-B (numerical gradients) over ``starts``."""
    args = (np.log(N), np.log(D), np.log(L))
    return min(minimize(epoch_objective, x0, args=args, method="L-BFGS-B").fun for x0 in starts)


def bench_chinchilla(args: argparse.Namespace) -> None:
    N, D, L = load_chinchilla()
    grid = epoch_grid()
    if not args.full:
        grid = grid[np.random.default_rng(0).choice(len(grid), args.subset, replace=False)]
    chunks = np.array_split(grid, args.repeats)  # the baseline's starts, spread over the turns
    t_ours, t_base, obj_base, res = [], 0.0, np.inf, None
    with threadpool_limits(limits=1, user_api="blas"):
        for chunk in chunks:
            t, res = cpu_time(lambda: fit_arrays("chinchilla", {"N": N, "D": D}, L, bootstrap=0))
            t_ours.append(t)
            t, obj = cpu_time(lambda: epoch_fit(N, D, L, chunk))
            t_base, obj_base = t_base + t, min(obj_base, obj)
    t_base_all = t_base * 4500 / len(grid)
    how = "all 4500 starts" if args.full else f"{len(grid)} random starts, time extrapolated x{4500 / len(grid):.0f}"
    print("== 1. Chinchilla fit (Huber-log, delta 1e-3, 240 points)")
    print(f"   ours:     {np.median(t_ours):8.3f} s   objective {res.metrics['objective']:.12f}   "
          + " ".join(f"{k}={v:.4g}" for k, v in res.params.items()))
    print(f"   baseline: {t_base_all:8.1f} s   objective {obj_base:.12f}   (Epoch-style: scipy L-BFGS-B, numerical "
          f"gradients, {how}; best objective over the starts run)")
    print(f"   speed ratio baseline/ours: {t_base_all / np.median(t_ours):.0f}x   (goal >= 100x)")
    print(f"   objective ours - baseline: {res.metrics['objective'] - obj_base:+.3e}   (goal <= 0)")


# ---------------------------------------------------------------- 2. plain variable projection


class PlainVarPro:
    """What a user writes for Chinchilla by variable projection: least_squares over (alpha, beta),
    E, A, B >= 0 solved by NNLS inside the residual, numerical Jacobian."""

    GRID = [(a, b) for a in np.arange(0, 2.01, 0.5) for b in np.arange(0, 2.01, 0.5)]

    def __init__(self, N, D, L):
        self.logN, self.logD, self.L = np.log(N), np.log(D), L

    def resid(self, ab: np.ndarray) -> np.ndarray:
        Phi = np.column_stack([np.ones_like(self.L), np.exp(-ab[0] * self.logN), np.exp(-ab[1] * self.logD)])
        return Phi @ nnls(Phi, self.L)[0] - self.L

    def refine(self, ab0) -> float:
        return float(np.mean(least_squares(self.resid, ab0, bounds=([0, 0], [10, 10])).fun ** 2))

    def every_start(self) -> float:
        return min(self.refine(g) for g in self.GRID)

    def best_start(self) -> float:
        scores = [float(np.sum(self.resid(np.array(g)) ** 2)) for g in self.GRID]
        return self.refine(self.GRID[int(np.argmin(scores))])


def bench_mse(args: argparse.Namespace) -> None:
    N, D, L = load_chinchilla()
    plain = PlainVarPro(N, D, L)
    with threadpool_limits(limits=1, user_api="blas"):
        out = turns({"ours": lambda: fit_arrays("chinchilla", {"N": N, "D": D}, L, loss="mse", bootstrap=0),
                     "every": plain.every_start, "best": plain.best_start}, args.repeats)
    t_ours, res = out["ours"]
    print("== 2. loss='mse' by variable projection (Chinchilla points; the whole fit_arrays call against the fitter alone)")
    print(f"   ours:     {t_ours:8.4f} s   objective {res.metrics['objective']:.12g}   "
          f"({res.start['n_starts']} distinct (alpha, beta) starts scored, {res.start['n_refined']} refined)")
    for key, name in (("every", "plain VarPro, each of the 25 grid starts refined"),
                      ("best", "plain VarPro, the best-scoring grid start refined")):
        t, obj = out[key]
        print(f"   {name}: {t:8.4f} s   objective {obj:.12g}   ratio baseline/ours {t / t_ours:.2f}x")
    print("   goal: >= 1x against the multistart baseline over the same starts, at an equal objective")


# ---------------------------------------------------------------- 3, 4


def bench_bootstrap(args: argparse.Namespace) -> None:
    N, D, L = load_chinchilla()
    t_fit, _ = cpu_time(lambda: fit_arrays("chinchilla", {"N": N, "D": D}, L, bootstrap=0))
    print(f"== 3. {args.boot} bootstrap refits of the Chinchilla law (fit alone: {t_fit:.2f} s CPU)")
    for n_jobs in (1, 2):
        t0 = time.perf_counter()
        res = fit_arrays("chinchilla", {"N": N, "D": D}, L, bootstrap=args.boot, seed=0, n_jobs=n_jobs)
        t_all = time.perf_counter() - t0
        print(f"   n_jobs={n_jobs}: fit + bootstrap {t_all:.1f} s wall (goal < 60 s)")
    print(f"   alpha interval {tuple(round(v, 4) for v in res.ci['alpha'])}, "
          f"beta {tuple(round(v, 4) for v in res.ci['beta'])}  (Epoch: (0.317, 0.373), (0.331, 0.415))")


def bench_scaling(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    sizes, times = [int(s) for s in args.sizes.split(",")], []
    print("== 4. fit time against the number of points (synthetic Chinchilla law, 1% noise)")
    for n in sizes:
        N, D = 10 ** rng.uniform(7, 10, n), 10 ** rng.uniform(9, 12, n)
        L = laws.chinchilla(N, D, 1.8, 480.0, 2000.0, 0.34, 0.37) * (1 + 0.01 * rng.standard_normal(n))
        t, _ = cpu_time(lambda: fit_arrays("chinchilla", {"N": N, "D": D}, L, bootstrap=0))
        times.append(t)
        print(f"   n = {n:>7}: {times[-1]:7.2f} s")
    slope = np.polyfit(np.log(sizes), np.log(times), 1)[0]
    print(f"   scaling exponent d log t / d log n = {slope:.2f}   (goal ~1: linear)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="run the Epoch baseline from all 4,500 starts")
    parser.add_argument("--subset", type=int, default=150, help="Epoch baseline starts timed without --full")
    parser.add_argument("--repeats", type=int, default=5, help="turns of each side")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap refits to time")
    parser.add_argument("--sizes", default="1000,10000,100000", help="point counts for the scaling test")
    parser.add_argument("--only", choices=["chinchilla", "mse", "bootstrap", "scaling"], default=None)
    args = parser.parse_args()
    for name, bench in [("chinchilla", bench_chinchilla), ("mse", bench_mse), ("bootstrap", bench_bootstrap),
                        ("scaling", bench_scaling)]:
        if args.only in (None, name):
            bench(args)


if __name__ == "__main__":
    main()
