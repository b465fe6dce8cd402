"""The ``forgetting-laws`` command line: sweep, fit, figures, report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ConfigError

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
    print(f"{'run_id':<20} {'rank':>5} {'lr':>9} {'seed':>5} {'steps':>6} {'status':>10} {'est.':>8}")
    total = 0.0
    for p in planned:
        r = p.spec
        secs = est.get(r.run_id, float("nan")) if p.todo else 0.0
        total += secs if p.todo and est else 0.0
        print(f"{r.run_id:<20} {r.lora.rank:>5} {r.train.lr:>9.2g} {r.train.seed:>5} {r.train.max_steps:>6} "
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgetting-laws", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_sweep(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
