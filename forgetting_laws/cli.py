"""The ``forgetting-laws`` command line: sweep, fit, figures, report, compare, continual and landscape."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import ConfigError
from .fit import FitDataError
from .laws import LawError
from .store import SchemaError

__all__ = ["main"]


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _dry_run(spec, runs_dir: Path, calibrate: bool) -> int:
    from .sweep import estimate, plan

    planned = plan(spec, runs_dir)
    est = estimate(spec) if calibrate else {}
    print(f"sweep {spec.base.sweep.name!r}: {len(planned)} runs, {sum(p.todo for p in planned)} to do, into {runs_dir}")
    print(f"{'run_id':<24} {'method':>7} {'rank':>5} {'lr':>9} {'seed':>5} {'steps':>6} {'status':>10} {'est.':>8}")
    total = 0.0
    for p in planned:
        r = p.spec
        secs = est.get(r.run_id, float("nan")) if p.todo else 0.0
        total += secs if p.todo and est else 0.0
        print(f"{r.run_id:<24} {r.method.name:>7} {r.lora.rank:>5} {r.train.lr:>9.2g} {r.train.seed:>5} {r.train.max_steps:>6} "
              f"{p.status or 'todo':>10} {_fmt_s(secs) if est else '-':>8}")
    if est:
        print(f"estimated time of the runs to do: {_fmt_s(total)} (+ {_fmt_s(est['_load_s'])} model load; "
              "from a short calibration on this machine)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .config import load_spec

    spec = load_spec(args.spec)
    runs_dir = Path(args.out) if args.out else Path("runs") / spec.base.sweep.name
    if args.dry_run:
        return _dry_run(spec, runs_dir, calibrate=not args.no_calibrate)
    from .sweep import run_sweep

    outcomes = run_sweep(spec, runs_dir, executor=args.executor, progress=not args.quiet)
    done = {o["status"] for o in outcomes}
    print(f"{len(outcomes)} runs run ({', '.join(sorted(done)) or 'none needed'}); results in {runs_dir}")
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a rank x step sweep from a TOML spec")
    p.add_argument("spec", help="sweep spec (TOML), e.g. sweeps/demo.toml")
    p.add_argument("--out", "-o", help="RUNS_DIR (default: runs/<sweep name>)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and estimate their time")
    p.add_argument("--no-calibrate", action="store_true", help="with --dry-run: skip the timing calibration")
    p.add_argument("--executor", default="local", help="executor (default: local)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)


def _analyse(args: argparse.Namespace, runs_dir: Path):
    from .store import load_runs
    from .study import fit_sweep

    df = load_runs(runs_dir)
    return df, fit_sweep(df, bootstrap=args.bootstrap, min_step=args.min_step, n_jobs=args.jobs)


def cmd_figures(args: argparse.Namespace) -> int:
    from .study import write_figures

    df, fits = _analyse(args, Path(args.runs_dir))
    written = write_figures(df, fits, args.out, min_step=args.min_step)
    for name, paths in written.items():
        print(f"{name}: {', '.join(map(str, paths))}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    from .study import write_figures

    df, fits = _analyse(args, Path(args.runs_dir))
    fig_dir = Path(args.figures) if args.figures else Path(args.out).parent / "figures"
    figures = write_figures(df, fits, fig_dir, min_step=args.min_step)
    print(f"report: {write_report(df, fits, figures, args.out, runs_dir=args.runs_dir)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Sweep -> fits -> figures -> report on the embedded default; resumable."""
    from .config import load_spec
    from .report import write_report
    from .study import verdict, write_figures
    from .sweep import run_sweep

    out = Path(args.out)
    run_sweep(load_spec(args.spec), out / "runs", progress=not args.quiet)
    df, fits = _analyse(args, out / "runs")
    figures = write_figures(df, fits, out / "figures", min_step=args.min_step)
    for name, res in fits.items():
        print(f"\n== {name}\n{_summary(res)}\n   {verdict(res)}")
        (out / "fits").mkdir(parents=True, exist_ok=True)
        res.to_json(out / "fits" / f"{name}.json")
    report = write_report(df, fits, figures, out / "report.html", runs_dir=out / "runs")
    print(f"\nreport:  {report.resolve()}\nfigures: {(out / 'figures').resolve()}  ({len(figures)} figures, PNG + PDF)"
          f"\nfits:    {(out / 'fits').resolve()}\nruns:    {(out / 'runs').resolve()}")
    return 0


def _summary(res) -> str:
    return "\n".join(f"   {p:>8} = {v:10.4g}   {res.ci_level:.0%} CI [{res.ci[p][0]:.4g}, {res.ci[p][1]:.4g}]"
                     for p, v in res.params.items())


def _add_analysis(sub) -> None:
    from .fit import add_fit_arguments, run_fit_command

    p = sub.add_parser("fit", help="fit a law to a runs folder or parquet file")
    add_fit_arguments(p)
    p.set_defaults(func=run_fit_command)
    for name, func, help_ in (("figures", cmd_figures, "draw the paper-style figures of a sweep"),
                              ("report", cmd_report, "write a self-contained HTML report of a sweep")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("runs_dir", help="RUNS_DIR of a sweep")
        p.add_argument("--out", "-o", required=True, help="output folder (figures) or .html file (report)")
        if name == "report":
            p.add_argument("--figures", help="folder for the figures (default: beside the report)")
        _common_fit_options(p)
        p.set_defaults(func=func)
    p = sub.add_parser("demo", help="sweep -> fits -> figures -> report on the embedded default")
    p.add_argument("--spec", default="sweeps/demo.toml")
    p.add_argument("--out", "-o", default="demo-out")
    p.add_argument("--quiet", action="store_true")
    # The paper leaves out the first 50 of 260 steps; the demo's 60 steps leave out those below 8
    # (Adam's early transient), which lifts R^2 of the P,N laws from ~0.9 to ~0.98.
    _common_fit_options(p, min_step=8)
    p.set_defaults(func=cmd_demo)


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare the methods of a sweep at matched fine-tuning loss; optionally write figure + tables."""
    from .compare import compare
    from .store import load_runs

    cmp = compare(load_runs(Path(args.runs_dir)), n_levels=args.levels, bootstrap=args.bootstrap,
                  min_step=args.min_step)
    print(cmp.report())
    if args.out:
        from .plots import save

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("matched", "laws", "compute"):
            getattr(cmp, name).to_csv(out / f"compare_{name}.csv", index=False)
        paths = save(cmp.plot(), out / "compare_methods")
        print(f"figure: {', '.join(map(str, paths))}; tables: {out}/compare_*.csv")
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare fine-tuning methods at matched fine-tuning loss")
    p.add_argument("runs_dir", help="RUNS_DIR of a sweep with several methods")
    p.add_argument("--out", "-o", help="folder for the figure and the CSV tables")
    p.add_argument("--levels", type=int, default=8, help="matched ft_loss levels (default 8)")
    _common_fit_options(p)
    p.set_defaults(func=cmd_compare)


def cmd_continual(args: argparse.Namespace) -> int:
    """Run the task sequences of a continual spec; print each matrix and metrics; write figures."""
    from .continual import (SIGN_NOTE, cl_matrix, cl_summary, format_matrix, load_continual,
                            load_continual_spec, run_continual)
    from .plots import cl_heatmap, cl_metric_bars, save

    spec = load_continual_spec(args.spec)
    out = Path(args.out)
    metas = run_continual(spec, out, progress=not args.quiet)
    df = load_continual(out)
    for meta in metas:
        R, base, tasks = cl_matrix(df, meta["sequence_id"])
        m = meta["metrics"]
        print(f"\n== {meta['sequence_id']}  (held-out loss; rows: after training, columns: evaluated task)")
        print(format_matrix(R, base, tasks))
        print("   " + "   ".join(f"{k} = {v:+.4f}" for k, v in m.items()))
        save(cl_heatmap(R, tasks, base, title=meta["sequence_id"]), out / "figures" / f"cl_matrix_{meta['sequence_id']}")
    summary = cl_summary(df[df.sequence_id.isin([m["sequence_id"] for m in metas])])
    summary.to_csv(out / "cl_summary.csv", index=False)
    save(cl_metric_bars(summary), out / "figures" / "cl_metrics")
    print(f"\n{SIGN_NOTE}\nresults: {out}/*.parquet, {out}/cl_summary.csv; adapters: {out}/adapters/; "
          f"figures: {out}/figures/")
    return 0


def _add_continual(sub) -> None:
    p = sub.add_parser("continual", help="fine-tune on a sequence of tasks; AP, BWT, FWT, Forgetting")
    p.add_argument("spec", help="continual spec (TOML with a [continual] tasks list), e.g. sweeps/continual.toml")
    p.add_argument("--out", "-o", required=True, help="output folder (resumable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_continual)


def _common_fit_options(p, min_step: int = 1) -> None:
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per fit (default 200)")
    p.add_argument("--min-step", type=int, default=min_step,
                   help=f"leave out steps below this (default {min_step}; step 0 always: N^-beta is infinite there)")
    p.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 4),
                   help="processes for the bootstrap refits (default: CPU cores, at most 4)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgetting-laws", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_sweep(sub)
    _add_analysis(sub)
    _add_compare(sub)
    _add_continual(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FitDataError, LawError, SchemaError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
