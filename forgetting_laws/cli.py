"""The ``forgetting-laws`` command line: sweep, fit, figures, report, compare, tasks, continual and landscape."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ConfigError, FitDataError
from .analyse.laws import LawError
from .registry import import_plugins
from .store import SchemaError

__all__ = ["main"]


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _loads_here(name: str) -> bool:
    """True for models this machine builds or reads from disk (aliases, local dirs, .gguf files)."""
    from .measure.models import model_aliases

    return name in model_aliases() or Path(name).is_dir() or name.endswith(".gguf")


def _print_batches(runs, world: int) -> None:
    """Per-device batch math of each distinct (batch_size, grad_accum); checks it splits over ``world``."""
    from .measure.distributed import accumulation_per_device

    for b, g, T in sorted({(r.train.batch_size, r.train.grad_accum, r.data.seq_len) for r in runs}):
        per_device = accumulation_per_device(b, g, world)
        print(f"update: {b} blocks x {g} micro-batches = {b * g} blocks x {T} tokens = {b * g * T} tokens; "
              f"world size {world}: {per_device} micro-batch{'es' if per_device > 1 else ''} of {b} per device")


def _check_corpora(runs) -> None:
    """Corpus names checked without loading them (a dry-run downloads nothing)."""
    from .measure.corpora import check_corpus_name

    for field in ("dataset", "reference"):
        for name in sorted({getattr(r.data, field) for r in runs}):
            check_corpus_name(name, f"data.{field}")


def _dry_run(spec, runs_dir: Path, args: argparse.Namespace) -> int:
    from .measure.distributed import world_size
    from .measure.sweep import plan

    planned = plan(spec, runs_dir)
    _check_corpora([p.spec for p in planned])
    world = args.world_size or world_size()
    print(f"sweep {spec.base.sweep.name!r}: {len(planned)} runs, {sum(p.todo for p in planned)} to do, into {runs_dir}")
    _print_batches([p.spec for p in planned], world)
    names = {p.spec.model.name for p in planned}
    if all(_loads_here(n) for n in names):
        return _measured_table(spec, planned, calibrate=not args.no_calibrate)
    return _gpu_table(planned, args.gpu, args.mfu, world)


def _gpu_table(planned, gpu: str, mfu: float, world: int) -> int:
    """Runs with their analytic GPU-hours and memory (no model is loaded or downloaded)."""
    from .measure.estimate import GPUS, gpu_hours, lora_params, memory_gb, model_shape, run_flops

    print(f"{'run_id':<24} {'method':>7} {'rank':>5} {'P':>8} {'steps':>6} {'status':>10} {'PFLOP':>8} "
          f"{'GPU-h':>7} {'mem GB':>7}")
    total, peak_mem = 0.0, 0.0
    for p in planned:
        r = p.spec
        shape = model_shape(r.model.name)
        flops, mem = run_flops(r, shape), memory_gb(r, shape)
        hours = gpu_hours(flops, gpu, mfu)
        total += hours if p.todo else 0.0
        peak_mem = max(peak_mem, mem)
        lora_m = lora_params(shape, r.lora.rank, r.lora.target_modules) / 1e6
        print(f"{r.run_id:<24} {r.method.name:>7} {r.lora.rank:>5} {lora_m:>7.1f}M {r.train.max_steps:>6} "
              f"{p.status or 'todo':>10} {flops / 1e15:>8.1f} {hours:>7.2f} {mem:>7.1f}")
    peak, capacity = GPUS[gpu]
    print(f"estimated GPU-hours of the runs to do: {total:.1f} on {gpu} ({peak / 1e12:.0f} TFLOP/s bf16 peak at an "
          f"assumed {mfu:.0%} MFU; --gpu, --mfu change these); wall time {_fmt_s(total * 3600 / world)} "
          f"on {world} GPU{'s' if world > 1 else ''}")
    fits = "fits" if peak_mem <= capacity else ("does NOT fit: turn on train.gradient_checkpointing or lower "
                                                "train.batch_size (and raise train.grad_accum)")
    print(f"peak memory per device about {peak_mem:.0f} GB of the {gpu}'s {capacity:.0f} GB: {fits}")
    return 0


def _measured_table(spec, planned, calibrate: bool) -> int:
    from .measure.sweep import estimate

    est = estimate(spec) if calibrate else {}
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


def _override_resources(spec, args: argparse.Namespace):
    """Apply --num-cpus / --num-gpus / --max-retries over the spec's [sweep] values."""
    from .measure.config import SweepSpec

    given = {n: getattr(args, n) for n in ("num_cpus", "num_gpus", "max_retries") if getattr(args, n) is not None}
    if not given:
        return spec
    raw = spec.to_dict()
    for name, value in given.items():
        raw["sweep"][name] = value
        raw["grid"].pop(f"sweep.{name}", None)
    return SweepSpec.from_dict(raw)


def _executor_options(args: argparse.Namespace) -> dict:
    options = {k: v for k, v in (("address", args.address), ("ray_cpus", args.ray_cpus)) if v is not None}
    if options and args.executor != "ray":
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in options)
        raise ConfigError(f"{flags} only apply with --executor ray (executor is {args.executor!r})")
    return options


def cmd_sweep(args: argparse.Namespace) -> int:
    from .measure.config import load_spec

    spec = _override_resources(load_spec(args.spec), args)
    runs_dir = Path(args.out) if args.out else Path("runs") / spec.base.sweep.name
    if args.dry_run:
        return _dry_run(spec, runs_dir, args)
    from .measure.sweep import run_sweep

    outcomes = run_sweep(spec, runs_dir, executor=args.executor, progress=not args.quiet,
                         **_executor_options(args))
    done = {o["status"] for o in outcomes}
    print(f"{len(outcomes)} runs run ({', '.join(sorted(done)) or 'none needed'}); results in {runs_dir}")
    failed = [o["run_id"] for o in outcomes if o["status"] == "failed"]
    if failed:
        print(f"{len(failed)} runs failed (error in RUNS_DIR/<run_id>.json; rerun the sweep to retry them): "
              f"{', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a rank x step sweep from a TOML spec")
    p.add_argument("spec", help="sweep spec (TOML), e.g. sweeps/demo.toml")
    p.add_argument("--out", "-o", help="RUNS_DIR (default: runs/<sweep name>)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and estimate their time")
    p.add_argument("--no-calibrate", action="store_true", help="with --dry-run: skip the timing calibration")
    p.add_argument("--gpu", default="a100", help="with --dry-run of a hub model: GPU of the estimate "
                                                 "(a100, h100, h200, l40s, a10g, rtx4090; default a100)")
    p.add_argument("--mfu", type=float, default=0.4, help="with --dry-run of a hub model: assumed model FLOP "
                                                          "utilisation (default 0.4)")
    p.add_argument("--world-size", type=int, help="with --dry-run: GPUs per run under torchrun/accelerate "
                                                  "(default: $WORLD_SIZE or 1); checks the batch splits")
    from .measure.sweep import executor_names

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


def _analyse(args: argparse.Namespace, runs_dir: Path):
    """Load a sweep, fit its standard laws under the options' policy, say which laws were skipped."""
    from .analyse.policy import policy_from_args
    from .analyse.standard import fit_sweep
    from .store import load_runs

    df = load_runs(runs_dir)
    fits = fit_sweep(df, policy_from_args(args))
    for name, why in fits.skipped.items():
        print(f"skipped law {name}: {why}", file=sys.stderr)
    return df, fits


def cmd_figures(args: argparse.Namespace) -> int:
    from .analyse.standard import write_figures

    df, fits = _analyse(args, Path(args.runs_dir))
    written = write_figures(df, fits, args.out)
    for name, paths in written.items():
        print(f"{name}: {', '.join(map(str, paths))}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .analyse.report import write_report
    from .analyse.standard import write_figures

    df, fits = _analyse(args, Path(args.runs_dir))
    fig_dir = Path(args.figures) if args.figures else Path(args.out).parent / "figures"
    figures = write_figures(df, fits, fig_dir)
    print(f"report: {write_report(df, fits, figures, args.out, runs_dir=args.runs_dir)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Sweep -> fits -> figures -> report on the embedded default; resumable."""
    from .measure.config import load_spec
    from .analyse.report import write_report
    from .analyse.standard import verdict, write_figures
    from .measure.sweep import run_sweep

    out = Path(args.out)
    run_sweep(load_spec(args.spec), out / "runs", progress=not args.quiet)
    df, fits = _analyse(args, out / "runs")
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

    res = fit(read_table(args.source), args.law, x=_parse_x(args.x), y=args.y.split(",") if args.y else None,
              policy=policy_from_args(args), group=args.group, holdout=args.holdout)
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

    p = sub.add_parser("fit", help="fit a law to a runs folder or parquet file")
    p.add_argument("source", help="a .parquet (or .csv) file, or a folder of *.parquet files")
    p.add_argument("--law", required=True, help=f"law name ({', '.join(names())})")
    p.add_argument("--x", action="append", default=[], metavar="INPUT=COLUMN",
                   help="map a law input to a column (repeatable), e.g. --x P=trainable_params")
    p.add_argument("--y", default=None, help="column fitted; comma-separated for a joint law")
    p.add_argument("--holdout", default=None, help="e.g. rank:largest or step:last:0.3")
    p.add_argument("--group", default="run_id", help="column of correlated rows (a run), resampled whole")
    add_policy_arguments(p)
    p.add_argument("-o", "--output", default="fits.json", help="where to save the FitResult JSON")
    p.set_defaults(func=cmd_fit)


def _add_analysis(sub) -> None:
    _add_fit(sub)
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
    _common_fit_options(p)
    p.set_defaults(func=cmd_demo)


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare the methods of a sweep at matched fine-tuning loss; optionally write figure + tables."""
    from .analyse.compare import compare
    from .store import load_runs

    from .analyse.policy import policy_from_args

    cmp = compare(load_runs(Path(args.runs_dir)), policy_from_args(args), n_levels=args.levels)
    print(cmp.report())
    if args.out:
        from .analyse.plots import save

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


def cmd_tasks(args: argparse.Namespace) -> int:
    """List the task names [probe.lm_eval] accepts: the shipped offline tasks first, then lm_eval's."""
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
    p.set_defaults(func=cmd_tasks)


def cmd_continual(args: argparse.Namespace) -> int:
    """Run the task sequences of a continual spec; print each matrix and metrics; write figures."""
    from .measure.continual import (SIGN_NOTE, cl_matrix, cl_summary, format_matrix, load_continual,
                            load_continual_spec, run_continual)
    from .analyse.plots import cl_heatmap, cl_metric_bars, save

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


def cmd_connectivity(args: argparse.Namespace) -> int:
    """Losses along the linear path between two adapters, in LoRA and Delta W space; barriers."""
    import numpy as np
    import torch

    from .measure.landscape import connectivity, eval_functions, load_adapter, load_second_adapter, make_space
    from .analyse.plots import save

    first = load_adapter(args.adapter1)
    second = load_adapter(args.adapter2)  # its spec names its task; its tensors are read below
    if second.spec.model.name != first.spec.model.name:
        raise ConfigError(f"the adapters sit on different base models ({first.spec.model.name!r}, "
                          f"{second.spec.model.name!r}); connectivity needs one base model")
    held = {}
    for loaded in (first, second):
        held.setdefault(f"held-out {loaded.spec.data.dataset}", torch.from_numpy(loaded.blocks()[1][: args.blocks]))
    evals = eval_functions(held, first.probe_data() if not args.no_reference else None)
    other = load_second_adapter(first.model, args.adapter2)
    theta = {k: (make_space(first.model, k).point(), other[k]) for k in args.spaces if k in other}
    for k in set(args.spaces) - set(theta):
        print(f"note: no {k} path: the adapters' LoRA shapes differ (different ranks); Delta W space still works")
    res = connectivity(first.model, theta, evals, np.linspace(0, 1, args.points))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res.curves.to_csv(out / "connectivity.csv", index=False)
    res.barriers.to_csv(out / "barriers.csv", index=False)
    paths = save(res.plot(), out / "connectivity")
    print(res.barriers.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"barrier = max_a [L(a) - ((1-a) L(0) + a L(1))]; curves: {out / 'connectivity.csv'}; figure: {paths[0]}")
    return 0


def cmd_sharpness(args: argparse.Namespace) -> int:
    """Sharpness of one adapter: 1-D curves, a 2-D surface and scalar measures, per space."""
    import numpy as np
    import pandas as pd
    import torch

    from .measure.landscape import curve_1d, load_adapter, make_space, sharpness_report, surface_2d
    from .analyse.plots import loss_surface, save, sharpness_curves

    loaded = load_adapter(args.adapter)
    blocks = torch.from_numpy(loaded.blocks()[0][: args.blocks])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    radii = np.linspace(-args.radius, args.radius, args.points)
    for kind in args.spaces:
        space = make_space(loaded.model, kind)
        reports.append(sharpness_report(space, blocks, args.eps, args.directions, args.rho, args.ascent_steps,
                                        args.hutchinson, args.seed))
        loss_fn, theta = space.loss_fn(blocks), space.point()
        curve = curve_1d(loss_fn, theta, space.reference(theta), radii, args.curve_directions, args.seed)
        curve.to_csv(out / f"curve_{kind}.csv", index=False)
        save(sharpness_curves(curve, title=f"{kind}: loss along filter-normalised directions"), out / f"curve_{kind}")
        if args.surface:
            surf = surface_2d(loss_fn, theta, space.reference(theta), np.linspace(-args.radius, args.radius, args.surface),
                              args.seed)
            surf.to_csv(out / f"surface_{kind}.csv", index=False)
            save(loss_surface(surf, title=f"{kind}: 2-D loss surface"), out / f"surface_{kind}")
    table = pd.DataFrame(reports)
    table.to_csv(out / "sharpness.csv", index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.5g}"))
    print(f"on {len(blocks)} training blocks of {loaded.spec.data.dataset!r}; tables and figures in {out}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgetting-laws", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_sweep(sub)
    _add_analysis(sub)
    _add_compare(sub)
    _add_tasks(sub)
    _add_continual(sub)
    _add_landscape(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import_plugins()
        return args.func(args)
    except (ConfigError, FitDataError, LawError, SchemaError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
