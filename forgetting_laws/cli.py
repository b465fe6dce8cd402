"""The ``forgetting-laws`` command line: sweep, fit, figures, report, compare, tasks, continual and landscape."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .analyse.laws import LawError
from .errors import ConfigError, FitDataError
from .registry import import_plugins
from .store import CorruptFile, SchemaError

__all__ = ["main"]


def _dry_run(spec, runs_dir: Path, args: argparse.Namespace) -> int:
    from .measure.distributed import world_size
    from .measure.estimate import batch_lines, estimate_sweep

    world = args.world_size or world_size()
    est = estimate_sweep(spec, runs_dir, gpu=args.gpu, mfu=args.mfu, world=world, calibrate=not args.no_calibrate)
    print(f"sweep {spec.base.sweep.name!r}: {len(est.table)} runs, {int(est.table.todo.sum())} to do, into {runs_dir}")
    print("\n".join(batch_lines([p.spec for p in est.planned], world)))
    print(est.table.drop(columns="todo").to_string(index=False))
    print("\n".join(est.summary))
    return 0


def _assignments(args: argparse.Namespace) -> list[str]:
    """--set assignments, with --num-cpus / --num-gpus / --max-retries as [sweep] ones."""
    given = [f"sweep.{n}={getattr(args, n)}" for n in ("num_cpus", "num_gpus", "max_retries")
             if getattr(args, n, None) is not None]
    return list(args.set or []) + given


def _executor_options(args: argparse.Namespace) -> dict:
    options = {k: v for k, v in (("address", args.address), ("ray_cpus", args.ray_cpus)) if v is not None}
    if options and args.executor != "ray":
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in options)
        raise ConfigError(f"{flags} only apply with --executor ray (executor is {args.executor!r})")
    return options


def cmd_sweep(args: argparse.Namespace) -> int:
    from .measure.spec import load_spec

    spec = load_spec(args.spec, _assignments(args))
    runs_dir = Path(args.out) if args.out else Path("runs") / spec.base.sweep.name
    if args.dry_run:
        return _dry_run(spec, runs_dir, args)
    from .measure.evals.harness import trusting_task_code
    from .measure.sweep import run_sweep

    with trusting_task_code(args.trust_task_code):
        outcomes = run_sweep(spec, runs_dir, executor=args.executor, progress=not args.quiet,
                             rerun_stale=args.rerun_stale, **_executor_options(args))
    done = {o["status"] for o in outcomes}
    print(f"{len(outcomes)} runs run ({', '.join(sorted(done)) or 'none needed'}); results in {runs_dir}")
    failed = [o["run_id"] for o in outcomes if o["status"] == "failed"]
    if failed:
        print(f"{len(failed)} runs failed (error in RUNS_DIR/_meta/<run_id>.json; rerun the sweep to retry them): "
              f"{', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a rank x step sweep from a TOML spec")
    p.add_argument("spec", help="sweep spec: a TOML file, or a built-in spec's name (demo, reference, ...; "
                                "`forgetting-laws specs` lists them)")
    _set_option(p)
    p.add_argument("--out", "-o", help="RUNS_DIR (default: runs/<sweep name>)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and estimate their time")
    p.add_argument("--no-calibrate", action="store_true", help="with --dry-run: skip the timing calibration")
    p.add_argument("--gpu", default="a100", help="with --dry-run of a hub model: GPU of the estimate "
                                                 "(a100, h100, h200, l40s, a10g, rtx4090; default a100)")
    p.add_argument("--mfu", type=float, default=0.4, help="with --dry-run of a hub model: assumed model FLOP "
                                                          "utilisation (default 0.4)")
    p.add_argument("--world-size", type=int, help="with --dry-run: GPUs per run under torchrun/accelerate "
                                                  "(default: $WORLD_SIZE or 1); checks the batch splits")
    from .measure.executors import executor_names

    p.add_argument("--rerun-stale", action="store_true", help="rerun complete runs whose corpora or model "
                                                                "changed since they were recorded (their files "
                                                                "are moved to RUNS_DIR/.corrupt/)")
    p.add_argument("--trust-task-code", action="store_true", help="let task YAMLs of probe.lm_eval.include_path "
                                                                  "run Python code (lm_eval's !function)")
    p.add_argument("--executor", default="local", choices=executor_names(),
                   help="local: one run at a time in this process; ray: each run a Ray task (default: local)")
    p.add_argument("--address", help="with --executor ray: a Ray cluster (ray://HOST:10001, HOST:6379, "
                                     "auto); default: start a local Ray for this sweep")
    p.add_argument("--ray-cpus", type=int, help="with --executor ray and no --address: CPUs of the local Ray")
    p.add_argument("--num-cpus", type=float, help="CPUs each run reserves (overrides [sweep] num_cpus)")
    p.add_argument("--num-gpus", type=float, help="GPUs each run reserves (overrides [sweep] num_gpus)")
    p.add_argument("--max-retries", type=int, help="retries of a failed run (overrides [sweep] max_retries)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)


def _fit(args: argparse.Namespace, df, fits_path: Path):
    """The standard fits of ``df`` under the options' policy, reused from ``fits_path`` while the rows
    and the policy are unchanged; says which laws were skipped."""
    from .analyse.policy import policy_from_args
    from .analyse.standard import fit_sweep_cached

    fits, reused = fit_sweep_cached(df, policy_from_args(args), fits_path, progress=not args.quiet)
    print(f"fits {'reused from' if reused else 'saved to'} {fits_path}", file=sys.stderr)
    for name, why in fits.skipped.items():
        print(f"skipped law {name}: {why}", file=sys.stderr)
    return fits


def _load(args: argparse.Namespace):
    from .analyse.tables import parse_column_map, read_source

    return read_source(args.source, parse_column_map(args.columns))


def _groups(df, by: str | None) -> list[tuple[str | None, object]]:
    """(label, rows) per value of ``by`` (one group, label None, without it)."""
    from .analyse.tables import group_label

    if by is None:
        return [(None, df)]
    if by not in df.columns:
        raise FitDataError(f"--by {by}: the table has no column {by!r}; its columns are {', '.join(df.columns)}")
    return [(group_label(by, v), g.reset_index(drop=True)) for v, g in df.groupby(by, sort=True, dropna=False)]


def _fits_path(args: argparse.Namespace, label: str | None) -> Path:
    """Where the fits of one group are kept: --fits, else RUNS_DIR/_fits/ or FILE.fits/ beside a table file."""
    source = Path(args.source)
    folder = Path(args.fits) if args.fits else source / "_fits" if source.is_dir() else \
        source.with_name(f"{source.name}.fits")
    return folder / (f"fits_{label}.json" if label else "fits.json")


def _refuse_existing(paths: list[Path], force: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more of the files it would write)" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]} exists{more}; pass --force to overwrite, or choose another --out")


def _figure_files(folder: Path) -> list[Path]:
    from .analyse.standard import FIGURES

    return [folder / f"{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")]


def cmd_figures(args: argparse.Namespace) -> int:
    from .analyse.standard import write_figures

    out = Path(args.out)
    plans = [(label, g, out / label if label else out) for label, g in _groups(_load(args), args.by)]
    _refuse_existing([f for _, _, d in plans for f in _figure_files(d)], args.force)
    for label, g, folder in plans:
        written = write_figures(g, _fit(args, g, _fits_path(args, label)), folder)
        for name, paths in written.items():
            print(f"{name}: {', '.join(map(str, paths))}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .analyse.report import write_report
    from .analyse.standard import write_figures

    out = Path(args.out)
    fig_root = Path(args.figures) if args.figures else out.parent / "figures"
    plans = [(label, g, out.with_name(f"{out.stem}_{label}{out.suffix}") if label else out,
              fig_root / label if label else fig_root) for label, g in _groups(_load(args), args.by)]
    _refuse_existing([f for _, _, report, figs in plans for f in [report, *_figure_files(figs)]], args.force)
    runs_dir = Path(args.source) if Path(args.source).is_dir() else None
    for label, g, report, fig_dir in plans:
        fits = _fit(args, g, _fits_path(args, label))
        figures = write_figures(g, fits, fig_dir)
        print(f"report: {write_report(g, fits, figures, report, runs_dir=runs_dir)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Sweep -> fits -> figures -> report on the embedded default; resumable."""
    from .measure.spec import load_spec
    from .analyse.report import write_report
    from .analyse.standard import verdict, write_figures
    from .measure.sweep import run_sweep

    from .store import load_runs

    out = Path(args.out)  # the demo's own folder: reused by a rerun, which resumes
    run_sweep(load_spec(args.spec, args.set or []), out / "runs", progress=not args.quiet)
    df = load_runs(out / "runs")
    fits = _fit(args, df, out / "runs" / "_fits" / "fits.json")
    figures = write_figures(df, fits, out / "figures")
    print(f"analysis policy: {fits.policy.describe()}")
    for name, res in fits.items():
        print(f"\n== {name}\n{_summary(res)}\n   {verdict(res)}")
        (out / "fits").mkdir(parents=True, exist_ok=True)
        res.to_json(out / "fits" / f"{name}.json")
    if fits.law_test is not None:
        print(f"\n{fits.law_test.report()}")
    report = write_report(df, fits, figures, out / "report.html", runs_dir=out / "runs")
    print(f"\nreport:  {report.resolve()}\nfigures: {(out / 'figures').resolve()}  ({len(figures)} figures, PNG + PDF)"
          f"\nfits:    {(out / 'fits').resolve()}\nruns:    {(out / 'runs').resolve()}")
    return 0


def _summary(res) -> str:
    lines = []
    for p, v in res.params.items():
        if p in res.unidentified:
            lines.append(f"   {p:>8} = not identified: {res.unidentified[p]}")
        else:
            lo, hi = res.ci[p]
            lines.append(f"   {p:>8} = {v:10.4g}   {res.ci_level:.0%} interval [{lo:.4g}, {hi:.4g}] ({res.interval_method})")
    return "\n".join(lines)


def cmd_fit(args: argparse.Namespace) -> int:
    """Load a table, fit one law, print the report and save the result as JSON."""
    from .analyse.fit import fit, read_table
    from .analyse.policy import policy_from_args
    from .analyse.tables import parse_column_map

    _refuse_existing([Path(args.output)], args.force)
    res = fit(read_table(args.source, parse_column_map(args.columns)), args.law, x=_parse_x(args.x),
              y=args.y.split(",") if args.y else None, policy=policy_from_args(args), group=args.group,
              holdout=args.holdout, progress=not args.quiet)
    print(res.report())
    res.to_json(args.output)
    print(f"saved {args.output}")
    return 0


def _parse_x(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, col = item.partition("=")
        if not sep or not key or not col:
            raise FitDataError(f"--x {item!r} is not INPUT=COLUMN; write e.g. --x P=trainable_params")
        out[key] = col
    return out


def _add_fit(sub) -> None:
    from .analyse.laws import names
    from .analyse.policy import add_policy_arguments

    p = sub.add_parser("fit", help="fit a law to a runs folder, a CSV or a parquet file")
    p.add_argument("source", help="a runs folder, a .csv or a .parquet file")
    _columns_option(p)
    p.add_argument("--law", required=True, help=f"law name ({', '.join(names())})")
    p.add_argument("--x", action="append", default=[], metavar="INPUT=COLUMN",
                   help="map a law input to a column (repeatable), e.g. --x P=trainable_params")
    p.add_argument("--y", default=None, help="column fitted; comma-separated for a joint law (default: the law's "
                                             "outputs)")
    p.add_argument("--holdout", default=None, help="rows held out and predicted, e.g. rank:largest or "
                                                   "step:last:0.3 (default: none)")
    p.add_argument("--group", default="run_id", help="column of correlated rows (a run), resampled whole")
    add_policy_arguments(p)
    p.add_argument("-o", "--output", default="fits.json", help="where to save the FitResult JSON")
    _output_options(p)
    p.set_defaults(func=cmd_fit)


def _columns_option(p) -> None:
    p.add_argument("--columns", metavar="SCHEMA=YOURS,...",
                   help="rename your columns to the schema's, e.g. --columns step=iter,trainable_params=params")


def _output_options(p) -> None:
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_analysis(sub) -> None:
    _add_fit(sub)
    for name, func, help_ in (("figures", cmd_figures, "draw the paper-style figures of a sweep"),
                              ("report", cmd_report, "write a self-contained HTML report of a sweep")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("source", help="RUNS_DIR of a sweep, or a .csv or .parquet table of your own")
        p.add_argument("--out", "-o", required=True, help="output .html file" if name == "report" else
                       "output folder")
        if name == "report":
            p.add_argument("--figures", help="folder for the figures (default: figures/ beside the report)")
        _columns_option(p)
        p.add_argument("--by", metavar="COLUMN", help="fit and draw each value of COLUMN apart (e.g. --by method): "
                                                      "subfolders of the figures, suffixed report names")
        p.add_argument("--fits", metavar="FOLDER", help="where the fits are kept and reused while the rows and the "
                                                        "policy are unchanged (default: RUNS_DIR/_fits/, or "
                                                        "FILE.fits/ beside a table file)")
        _output_options(p)
        _common_fit_options(p)
        p.set_defaults(func=func)
    p = sub.add_parser("demo", help="sweep -> fits -> figures -> report on the embedded default")
    p.add_argument("--spec", default="demo", help="sweep spec: a TOML file or a built-in spec's name")
    _set_option(p)
    p.add_argument("--out", "-o", default="demo-out", help="output folder: runs/, fits/, figures/, report.html")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _common_fit_options(p)
    p.set_defaults(func=cmd_demo)


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare the methods of a sweep at matched fine-tuning loss, paired against plain LoRA by rank
    and seed; optionally write figures + tables."""
    from .analyse.compare import compare
    from .analyse.paired import paired
    from .store import load_runs

    from .analyse.policy import policy_from_args

    runs = load_runs(Path(args.runs_dir))
    policy = policy_from_args(args)
    cmp = compare(runs, policy, n_levels=args.levels)
    pairs = paired(runs, n_levels=args.paired_levels, level=policy.ci_level) if "lora" in set(runs.method) else None
    print(cmp.report())
    print(f"\n{pairs.report()}" if pairs is not None else
          "\nno plain-LoRA runs: no paired differences (add 'lora' to method.name)")
    if args.out:
        from .analyse.plots import save

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("matched", "laws", "compute"):
            getattr(cmp, name).to_csv(out / f"compare_{name}.csv", index=False)
        paths = save(cmp.plot(), out / "compare_methods")
        if pairs is not None:
            pairs.table.to_csv(out / "compare_paired.csv", index=False)
            pairs.pairs.to_csv(out / "compare_pairs.csv", index=False)
            paths += save(pairs.plot(), out / "compare_paired")
        print(f"figures: {', '.join(map(str, paths))}; tables: {out}/compare_*.csv")
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare fine-tuning methods at matched fine-tuning loss")
    p.add_argument("runs_dir", help="RUNS_DIR of a sweep with several methods")
    p.add_argument("--out", "-o", help="folder for the figure and the CSV tables")
    p.add_argument("--levels", type=int, default=8, help="matched ft_loss levels (default 8)")
    p.add_argument("--paired-levels", type=int, default=4,
                   help="matched ft_loss levels of the paired differences per arm (default 4)")
    _common_fit_options(p)
    p.set_defaults(func=cmd_compare)


def cmd_tasks(args: argparse.Namespace) -> int:
    """List the task names [probe.lm_eval] accepts: the shipped offline tasks first, then lm_eval's."""
    from .measure.evals.harness import trusting_task_code

    with trusting_task_code(args.trust_task_code):
        return _print_tasks(args)


def _print_tasks(args: argparse.Namespace) -> int:
    from .measure.evals import TASKS_DIR, list_tasks

    local = list_tasks(args.include_path, args.match, defaults=False)
    print(f"offline tasks shipped with forgetting-laws ({TASKS_DIR}):")
    print("\n".join(f"  {name}" for name in local) or "  (none match)")
    if not args.local:
        others = [t for t in list_tasks(args.include_path, args.match) if t not in local]
        print(f"lm-evaluation-harness tasks, groups and tags ({len(others)}; most download their data):")
        print("\n".join(f"  {name}" for name in others) or "  (none match)")
    return 0


def _add_tasks(sub) -> None:
    p = sub.add_parser("tasks", help="list the lm-evaluation-harness task names [probe.lm_eval] accepts")
    p.add_argument("--match", "-m", default="", help="only names containing this text (case-insensitive)")
    p.add_argument("--include-path", default="", help="an extra folder of task YAMLs, as probe.lm_eval.include_path")
    p.add_argument("--local", action="store_true", help="only the shipped offline tasks (and --include-path's)")
    p.add_argument("--trust-task-code", action="store_true", help="let --include-path's task YAMLs run Python "
                                                                  "code (lm_eval's !function)")
    p.set_defaults(func=cmd_tasks)


def cmd_continual(args: argparse.Namespace) -> int:
    """Run the task sequences of a continual spec; print each matrix and metrics; write figures."""
    from .measure.continual import (SIGN_NOTE, cl_matrix, cl_summary, format_matrix, load_continual,
                            load_continual_spec, run_continual)
    from .analyse.plots import cl_heatmap, cl_metric_bars, save

    spec = load_continual_spec(args.spec, args.set or [])
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
    p.add_argument("spec", help="continual spec (TOML with a [continual] tasks list): a file or a built-in "
                                "name, e.g. continual")
    _set_option(p)
    p.add_argument("--out", "-o", required=True, help="output folder (resumable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_continual)


def cmd_connectivity(args: argparse.Namespace) -> int:
    """Losses along the linear path between two adapters, in LoRA and Delta W space; barriers."""
    from .analyse.plots import connectivity_curves, save
    from .measure.landscape import connect_adapters

    res, notes = connect_adapters(args.adapter1, args.adapter2, args.points, args.blocks, args.spaces,
                                  reference=not args.no_reference)
    for note in notes:
        print(f"note: {note}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res.curves.to_csv(out / "connectivity.csv", index=False)
    res.barriers.to_csv(out / "barriers.csv", index=False)
    paths = save(connectivity_curves(res.curves), out / "connectivity")
    print(res.barriers.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"barrier = max_a [L(a) - ((1-a) L(0) + a L(1))]; curves: {out / 'connectivity.csv'}; figure: {paths[0]}")
    return 0


def cmd_sharpness(args: argparse.Namespace) -> int:
    """Sharpness of one adapter: 1-D curves, a 2-D surface and scalar measures, per space."""
    from .analyse.plots import loss_surface, save, sharpness_curves
    from .measure.landscape import sharpness_study

    study = sharpness_study(args.adapter, args.spaces, args.blocks, args.radius, args.points, args.curve_directions,
                            args.surface, args.seed, eps=args.eps, n_directions=args.directions, rho=args.rho,
                            ascent_steps=args.ascent_steps, hutchinson=args.hutchinson)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind, curve in study.curves.items():
        curve.to_csv(out / f"curve_{kind}.csv", index=False)
        save(sharpness_curves(curve, title=f"{kind}: loss along filter-normalised directions"), out / f"curve_{kind}")
    for kind, surf in study.surfaces.items():
        surf.to_csv(out / f"surface_{kind}.csv", index=False)
        save(loss_surface(surf, title=f"{kind}: 2-D loss surface"), out / f"surface_{kind}")
    study.table.to_csv(out / "sharpness.csv", index=False)
    print(study.table.to_string(index=False, float_format=lambda v: f"{v:.5g}"))
    print(f"on {study.n_blocks} training blocks of {study.corpus!r}; tables and figures in {out}")
    return 0


def cmd_sharpness_vs_forgetting(args: argparse.Namespace) -> int:
    """Spearman correlation (bootstrap CI over runs) of sharpness and forgetting across a sweep."""
    import json

    from .measure.landscape import rank_correlation, sweep_sharpness
    from .analyse.plots import save, sharpness_scatter

    if args.measure == "ascent_sharpness" and args.ascent_steps < 1:
        raise ConfigError(f"--measure ascent_sharpness needs --ascent-steps >= 1 (got {args.ascent_steps})")
    table = sweep_sharpness(args.runs_dir, args.space, args.blocks, progress=not args.quiet, eps=args.eps,
                            n_directions=args.directions, rho=args.rho, ascent_steps=args.ascent_steps,
                            seed=args.seed)
    corr = rank_correlation(table[args.measure], table["forgetting"], args.bootstrap)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "sharpness_runs.csv", index=False)
    (out / "correlation.json").write_text(json.dumps({"measure": args.measure, "space": args.space, **corr}, indent=2))
    save(sharpness_scatter(table, corr, x=args.measure), out / "sharpness_vs_forgetting")
    cols = ["run_id", "method", "rank", args.measure, "forgetting", "ft_loss"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.5g}"))
    print(f"Spearman rho({args.measure}, forgetting) = {corr['spearman_rho']:+.3f}, {corr['level']:.0%} bootstrap CI "
          f"[{corr['ci_lo']:+.3f}, {corr['ci_hi']:+.3f}], p = {corr['p_value']:.3g}, n = {corr['n_runs']} runs; "
          f"forgetting = final forget_loss - step-0 forget_loss. Results in {out}")
    return 0


def _add_landscape(sub) -> None:
    from .measure.landscape import SPACES

    p = sub.add_parser("connectivity", help="losses along the linear path between two adapters; barrier heights")
    p.add_argument("adapter1", help="adapter folder (from `continual` or a sweep with [train] save_adapter = true)")
    p.add_argument("adapter2", help="second adapter folder, on the same base model")
    p.add_argument("--out", "-o", required=True, help="output folder for the CSV tables and the figure")
    p.add_argument("--points", type=int, default=11, help="points on the path, end points included (default 11)")
    p.add_argument("--blocks", type=int, default=8, help="held-out blocks per task (default 8)")
    p.add_argument("--spaces", nargs="+", choices=SPACES, default=list(SPACES), help="interpolation spaces")
    p.add_argument("--no-reference", action="store_true", help="skip the forgetting loss on the reference corpus")
    p.set_defaults(func=cmd_connectivity)

    p = sub.add_parser("sharpness", help="loss curves, surface and sharpness measures around one adapter")
    p.add_argument("adapter", help="adapter folder")
    p.add_argument("--out", "-o", required=True, help="output folder")
    _sharpness_options(p)
    p.add_argument("--spaces", nargs="+", choices=SPACES, default=list(SPACES), help="parameter spaces")
    p.add_argument("--hutchinson", type=int, default=0, help="Rademacher samples for the Hessian trace (0: skip)")
    p.add_argument("--radius", type=float, default=1.0, help="curves and surface span [-radius, radius] (default 1)")
    p.add_argument("--points", type=int, default=11, help="points per 1-D curve (default 11)")
    p.add_argument("--curve-directions", type=int, default=3, help="directions drawn as 1-D curves (default 3)")
    p.add_argument("--surface", type=int, default=0, help="grid points per axis of the 2-D surface (0: none)")
    p.set_defaults(func=cmd_sharpness)

    p = sub.add_parser("sharpness-vs-forgetting", help="rank correlation of sharpness and forgetting across a sweep")
    p.add_argument("runs_dir", help="RUNS_DIR of a sweep run with [train] save_adapter = true")
    p.add_argument("--out", "-o", required=True, help="output folder")
    _sharpness_options(p)
    p.add_argument("--space", choices=SPACES, default="lora", help="parameter space (default lora)")
    p.add_argument("--measure", choices=["eps_sharpness", "eps_curvature", "ascent_sharpness"], default="eps_sharpness",
                   help="eps_sharpness: mean rise at +eps; eps_curvature: its symmetric form (no gradient term); "
                        "ascent_sharpness: SAM's worst case (needs --ascent-steps > 0)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the runs (default 1000)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sharpness_vs_forgetting)


def _sharpness_options(p) -> None:
    p.add_argument("--eps", type=float, default=0.05, help="radius of eps-sharpness, in filter-normalised units (0.05)")
    p.add_argument("--directions", type=int, default=8, help="random directions K for eps-sharpness (default 8)")
    p.add_argument("--rho", type=float, default=0.05, help="L2 radius of the SAM-style ascent (default 0.05)")
    p.add_argument("--ascent-steps", type=int, default=3, help="projected ascent steps (default 3; 0: skip)")
    p.add_argument("--blocks", type=int, default=8, help="training blocks the loss is measured on (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions")


def _common_fit_options(p) -> None:
    from .analyse.policy import add_policy_arguments

    add_policy_arguments(p)


def cmd_plan(args: argparse.Namespace) -> int:
    """Predict gain, forgetting and cost over ranks x steps from a pilot; recommend; optionally verify."""
    from .analyse.plan import plan
    from .analyse.plots import save
    from .analyse.policy import policy_from_args
    from .measure.verify import gpu_cost, verify
    from .store import load_runs

    runs = Path(args.runs_dir)
    p = plan(load_runs(runs), ranks=args.ranks, steps=args.steps, target_ft=args.target_ft,
             max_forgetting=args.max_forgetting, max_steps=args.max_steps,
             max_cpu_s=None if args.max_cpu_hours is None else 3600 * args.max_cpu_hours,
             max_extrapolation=args.max_extrapolation, policy=policy_from_args(args),
             cost=gpu_cost(runs, tuple(args.gpu), args.mfu))
    print(p.report())
    out = Path(args.out) if args.out else runs / "_plans"
    out.mkdir(parents=True, exist_ok=True)
    p.candidates.to_csv(out / "candidates.csv", index=False)
    paths = save(p.plot(), out / "plan")
    print(f"candidates: {out / 'candidates.csv'}; figure: {paths[0]}")
    if args.verify:
        rec = verify(p, runs, progress=not args.quiet)
        for name in ("ft", "forget"):
            v = rec[name]
            print(f"verify {name}: predicted {v['predicted']:.4f} [{v['lo']:.4f}, {v['hi']:.4f}], measured "
                  f"{v['measured']:.4f}: {'inside' if v['covered'] else 'OUTSIDE'} the interval "
                  f"(error {v['relative_error']:+.2%})")
        print(f"recorded in {runs / '_plans' / 'verifications.jsonl'}")
    return 0


def _add_plan(sub) -> None:
    from .analyse.policy import add_policy_arguments

    p = sub.add_parser("plan", help="predict forgetting and gain for any rank and steps from a pilot sweep; "
                                    "recommend a setting; --verify runs it")
    p.add_argument("runs_dir", help="RUNS_DIR of a pilot sweep (one model and method), e.g. of the built-in 'pilot'")
    p.add_argument("--target-ft", type=float, help="the fine-tuning loss to reach: recommend the setting predicted "
                                                   "to reach it with the least forgetting")
    p.add_argument("--max-forgetting", type=float, help="ceiling on the rise of L_f over the base model, at the "
                                                        "upper end of its prediction interval")
    p.add_argument("--max-steps", type=int, help="budget of update steps")
    p.add_argument("--max-cpu-hours", type=float, help="budget of CPU hours (from the pilot's measured step times)")
    p.add_argument("--ranks", type=int, nargs="+", help="candidate ranks (default: the pilot's, 2x and 4x its largest)")
    p.add_argument("--steps", type=int, nargs="+", help="candidate step counts (default: the pilot's last three, "
                                                        "2x and 4x its longest)")
    p.add_argument("--max-extrapolation", type=float, default=1.0, help="never recommend a candidate more decades "
                                                                        "than this beyond the pilot's P or N")
    p.add_argument("--gpu", nargs="+", default=["a100", "h100"], help="GPUs of the cost columns")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOP utilisation of the GPU-hours")
    p.add_argument("--out", "-o", help="folder for candidates.csv and the figure (default: RUNS_DIR/_plans)")
    p.add_argument("--verify", action="store_true", help="run the recommendation with the pilot's spec and check "
                                                         "the measured losses against the intervals")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_policy_arguments(p)
    p.set_defaults(func=cmd_plan)


def _set_option(p) -> None:
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override a spec field (repeatable), validated like the file and recorded in each run's "
                        "spec, e.g. --set train.max_steps=20 --set 'lora.rank=[1, 4]'")


def cmd_specs(args: argparse.Namespace) -> int:
    """List the built-in specs (shipped with the package)."""
    from .measure.spec import BUILTIN_SPECS, builtin_specs

    for name, what in builtin_specs().items():
        print(f"{name:<28} {what}")
    print(f"(files in {BUILTIN_SPECS}; copy one to start your own)")
    return 0


class _Help(argparse.HelpFormatter):
    """--help shows every default that is not already in the help text (none for flags)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default in (None, False, "", [], argparse.SUPPRESS)
                or not action.option_strings):
            return text
        shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
        return f"{text} (default: {shown})"


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="forgetting-laws", description=__doc__, formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"forgetting-laws {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    original = sub.add_parser
    sub.add_parser = lambda *a, **k: original(*a, formatter_class=_Help, **k)  # defaults in every --help
    p = sub.add_parser("specs", help="list the built-in sweep specs")
    p.set_defaults(func=cmd_specs)
    _add_sweep(sub)
    _add_analysis(sub)
    _add_compare(sub)
    _add_tasks(sub)
    _add_continual(sub)
    _add_landscape(sub)
    _add_plan(sub)
    return parser


#: Libraries whose FutureWarnings and UserWarnings are theirs to fix, not the user's to read.
THIRD_PARTY = r"(transformers|torch|peft|datasets|lm_eval|accelerate|huggingface_hub|evaluate)(\.|$)"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Called as the program (``argv`` None: the command line), third-party
    FutureWarnings and UserWarnings are left out and warnings print as one ``warning:`` line; called
    with ``argv`` (from Python, from the tests) every warning reaches the caller as usual."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():  # for this command only: the caller's filters are restored after it
        if argv is None:
            for category in (FutureWarning, UserWarning):
                warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY)
            warnings.showwarning = _show_warning
        try:
            import_plugins()
            return args.func(args)
        except (ConfigError, FitDataError, LawError, SchemaError, CorruptFile, FileNotFoundError, FileExistsError,
                ImportError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
