"""Print the fitted numbers the README quotes, from the committed runs and the vendored Chinchilla points.

Usage: python analysis/readme_numbers.py [RUNS_DIR] [--min-step K ...]   (default: examples/demo-runs)

Every number comes from today's code under the analysis policy given on the command line
(default: the toolkit's), so the README can be checked against a rerun.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pandas as pd

from forgetting_laws import load_runs
from forgetting_laws.analyse.fit import fit_arrays
from forgetting_laws.analyse.fit_report import verdict
from forgetting_laws.analyse.policy import add_policy_arguments, policy_from_args
from forgetting_laws.analyse.standard import fit_sweep

REPO = Path(__file__).resolve().parents[1]


def demo(runs_dir: str, policy) -> None:
    df = load_runs(runs_dir)
    fits = fit_sweep(df, policy)
    print(f"== {runs_dir}: {df.run_id.nunique()} runs; policy: {policy.describe()}")
    for name, res in fits.items():
        params = ", ".join(f"{p} = {v:.4g} (held)" if p in res.law.gauge else f"{p}: not identified"
                           if p in res.unidentified else f"{p} = {v:.4g} [{res.ci[p][0]:.4g}, {res.ci[p][1]:.4g}]"
                           for p, v in res.params.items())
        print(f"\n-- {name} ({res.interval_method}): {params}\n   {verdict(res)}")
        held = res.metrics.get("holdout")
        if held and held.get("rise_are") is not None:
            print(f"   held-out error relative to the rise of L_f since step 0: {held['rise_are']:.0%}; baselines: "
                  + ", ".join(f"{b['name']} {b['are']:.2%} ({b['rise_are']:.0%} of the rise)" for b in held["baselines"]))
    for name, why in fits.skipped.items():
        print(f"\n-- {name}: skipped: {why}")
    if fits.law_test is not None:
        print(f"\n{fits.law_test.report()}")


def chinchilla(policy) -> None:
    df = pd.read_csv(REPO / "tests" / "data" / "chinchilla_epoch_svg_extracted.csv").sort_values("loss").iloc[:-5]
    N = df["Model Size"].to_numpy()
    res = fit_arrays("chinchilla", {"N": N, "D": df["Training FLOP"].to_numpy() / (6 * N)}, df["loss"].to_numpy(),
                     policy.updated(min_step=0))
    print(f"\n== Chinchilla points (Epoch AI, 240): objective {res.metrics['objective']:.8f}; "
          + ", ".join(f"{p} = {v:.4g} [{res.ci[p][0]:.4g}, {res.ci[p][1]:.4g}]" for p, v in res.params.items())
          + f" ({res.interval_method}: {res.interval_note})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", nargs="?", default=str(REPO / "examples" / "demo-runs"))
    parser.add_argument("--no-chinchilla", action="store_true", help="skip the Chinchilla fit (and its bootstrap)")
    add_policy_arguments(parser)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # the numbers only; each fit's warnings are in its report
    policy = policy_from_args(args)
    demo(args.runs_dir, policy)
    if not args.no_chinchilla:
        chinchilla(policy)


if __name__ == "__main__":
    main()
