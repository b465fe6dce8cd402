"""Benchmark the fitting engine against the fit a user would otherwise write.

Run from the repository root (the data are vendored in ``tests/data/``)::

    python benchmarks/bench_fit.py            # baseline timed on 150 of 4,500 starts
    python benchmarks/bench_fit.py --full     # baseline from all 4,500 starts (~5 min)

Three measurements, each printed with the ratio against its goal:

1. The Chinchilla fit (Huber on log residuals, delta 1e-3, Epoch's 240 points)
   against the Epoch-style fit: scipy L-BFGS-B with numerical gradients from
   each start of the 4,500-point grid. Goal: same or lower objective, >= 100x faster.
2. 1,000 bootstrap refits of the same law. Goal: under 60 s on 2 cores.
3. Fit time against the number of points (1k, 10k, 100k synthetic). Goal: linear.

Both fits of (1) run with single-threaded BLAS, so the ratio measures the
algorithm, not thread scheduling.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
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


def baseline(N, D, L, n_starts: int | None, seed: int = 0) -> tuple[float, float, int]:
    """Epoch-style fit; returns (extrapolated seconds for 4,500 starts, best objective, starts run)."""
    grid = epoch_grid()
    if n_starts is not None:
        grid = grid[np.random.default_rng(seed).choice(len(grid), n_starts, replace=False)]
    args = (np.log(N), np.log(D), np.log(L))
    t0 = time.perf_counter()
    best = min(minimize(epoch_objective, x0, args=args, method="L-BFGS-B").fun for x0 in grid)
    elapsed = time.perf_counter() - t0
    return elapsed * 4500 / len(grid), float(best), len(grid)


def ours(N, D, L, repeats: int = 3) -> tuple[float, float, dict]:
    times, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fit_arrays("chinchilla", {"N": N, "D": D}, L, bootstrap=0)
        times.append(time.perf_counter() - t0)
    return min(times), res.metrics["objective"], res.params


def bench_chinchilla(args: argparse.Namespace) -> None:
    N, D, L = load_chinchilla()
    t_ours, obj_ours, params = ours(N, D, L)
    with threadpool_limits(limits=1, user_api="blas"):
        t_base, obj_base, n_run = baseline(N, D, L, None if args.full else args.subset)
    how = "all 4500 starts" if args.full else f"{n_run} random starts, time extrapolated x{4500 / n_run:.0f}"
    print("== 1. Chinchilla fit (Huber-log, delta 1e-3, 240 points)")
    print(f"   ours:     {t_ours:8.3f} s   objective {obj_ours:.10f}   "
          + " ".join(f"{k}={v:.4g}" for k, v in params.items()))
    print(f"   baseline: {t_base:8.1f} s   objective {obj_base:.10f}   (scipy L-BFGS-B, numerical "
          f"gradients, {how}; best objective over the starts run)")
    print(f"   speed ratio baseline/ours: {t_base / t_ours:.0f}x   (goal >= 100x)")
    print(f"   objective ours - baseline: {obj_ours - obj_base:+.3e}   (goal <= 0)")


def bench_bootstrap(args: argparse.Namespace) -> None:
    N, D, L = load_chinchilla()
    t0 = time.perf_counter()
    fit_arrays("chinchilla", {"N": N, "D": D}, L, bootstrap=0)
    t_fit = time.perf_counter() - t0
    print(f"== 2. {args.boot} bootstrap refits of the Chinchilla law (fit alone: {t_fit:.2f} s)")
    for n_jobs in (1, 2):
        t0 = time.perf_counter()
        res = fit_arrays("chinchilla", {"N": N, "D": D}, L, bootstrap=args.boot, seed=0, n_jobs=n_jobs)
        t_all = time.perf_counter() - t0
        print(f"   n_jobs={n_jobs}: fit + bootstrap {t_all:.1f} s (bootstrap alone ~{t_all - t_fit:.1f} s; "
              "goal < 60 s)")
    print(f"   alpha CI {tuple(round(v, 4) for v in res.ci['alpha'])}, "
          f"beta CI {tuple(round(v, 4) for v in res.ci['beta'])}  (Epoch: (0.317, 0.373), (0.331, 0.415))")


def bench_scaling(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    sizes, times = [int(s) for s in args.sizes.split(",")], []
    print("== 3. fit time against the number of points (synthetic Chinchilla law, 1% noise)")
    for n in sizes:
        N, D = 10 ** rng.uniform(7, 10, n), 10 ** rng.uniform(9, 12, n)
        L = laws.chinchilla(N, D, 1.8, 480.0, 2000.0, 0.34, 0.37) * (1 + 0.01 * rng.standard_normal(n))
        t0 = time.perf_counter()
        fit_arrays("chinchilla", {"N": N, "D": D}, L, bootstrap=0)
        times.append(time.perf_counter() - t0)
        print(f"   n = {n:>7}: {times[-1]:7.2f} s")
    slope = np.polyfit(np.log(sizes), np.log(times), 1)[0]
    print(f"   scaling exponent d log t / d log n = {slope:.2f}   (goal ~1: linear)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="run the baseline from all 4,500 starts")
    parser.add_argument("--subset", type=int, default=150, help="baseline starts timed without --full")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap refits to time")
    parser.add_argument("--sizes", default="1000,10000,100000", help="point counts for the scaling test")
    parser.add_argument("--only", choices=["chinchilla", "bootstrap", "scaling"], default=None)
    args = parser.parse_args()
    for name, bench in [("chinchilla", bench_chinchilla), ("bootstrap", bench_bootstrap),
                        ("scaling", bench_scaling)]:
        if args.only in (None, name):
            bench(args)


if __name__ == "__main__":
    main()
