"""Write the notebooks from their cell sources (run: python notebooks/_build.py)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
SETUP = '''import os
from pathlib import Path
import warnings
from forgetting_laws.cli import THIRD_PARTY
for category in (FutureWarning, UserWarning):  # third-party notices are theirs to fix, not yours to read
    warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY)
import forgetting_laws as fl
from forgetting_laws.analyse import fit, laws, plots
from forgetting_laws.analyse.policy import DEFAULT_POLICY
# The runs of the project's own demo sweep, committed under examples/; point RUNS elsewhere for yours.
RUNS = Path(os.environ.get("FORGETTING_LAWS_RUNS", "../examples/demo-runs"))
# One analysis policy for every fit (the CLI's defaults too); the tests shorten the bootstrap.
POLICY = DEFAULT_POLICY.updated(bootstrap=int(os.environ.get("FORGETTING_LAWS_BOOTSTRAP", DEFAULT_POLICY.bootstrap)))
POLICY.describe()'''

CL_SETUP = '''import os
import tempfile
from pathlib import Path
import warnings
from forgetting_laws.cli import THIRD_PARTY
for category in (FutureWarning, UserWarning):  # third-party notices are theirs to fix, not yours to read
    warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY)
import numpy as np
import pandas as pd
import torch
from forgetting_laws.measure import continual
from forgetting_laws.measure import landscape
from forgetting_laws.analyse import plots
# The embedded default; the test suite runs this notebook on the tiny random model instead.
MODEL = os.environ.get("FORGETTING_LAWS_NB_MODEL", "smollm2-135m")
OUT = Path(os.environ.get("FORGETTING_LAWS_NB_OUT") or tempfile.mkdtemp(prefix="cl-notebook-"))
MODEL, OUT'''

CONTINUAL_LANDSCAPE = [
    "# Continual learning and the geometry of forgetting\n\nFine-tune on a sequence of tasks (news, then "
    "Python's docs, then Python source), measure every task after each (AP, BWT, FWT, Forgetting), then look "
    "at the loss landscape: the linear path between the adapters of successive tasks (Ren et al. 2024) and "
    "the sharpness around an adapter (Li et al. 2024). Small settings (3 tasks x 10 steps, 8 blocks) so it "
    "runs in a few minutes on a CPU; `forgetting-laws continual continual` is the full version.",
    CL_SETUP,
    "## A task sequence, two methods\nThe same spec as a TOML file, as a dict; `[grid]` makes one sequence "
    "per method.",
    "spec = continual.ContinualSpec.from_dict({\n"
    "    \"sweep\": {\"name\": \"notebook\"}, \"model\": {\"name\": MODEL},\n"
    "    \"data\": {\"reference\": \"python-docs\", \"seq_len\": 128, \"heldout_blocks\": 8, \"reference_blocks\": 8},\n"
    "    \"train\": {\"max_steps\": 10, \"batch_size\": 4, \"lr\": 1e-3}, \"lora\": {\"rank\": 8},\n"
    "    \"method\": {\"replay_ratio\": 0.25},\n"
    "    \"continual\": {\"tasks\": [\"lee-news\", \"python-docs\", \"python-source\"]},\n"
    "    \"grid\": {\"method.name\": [\"lora\", \"replay\"]}})\n"
    "metas = continual.run_continual(spec, OUT, progress=False)\n"
    "df = continual.load_continual(OUT)\n"
    "df.head(6)",
    "## The task x task matrix and the metrics\nRows: after training a task; columns: the task evaluated "
    "(held-out loss). " + "The metrics are those of the negated losses: BWT < 0 and Forgetting > 0 mean forgetting.",
    "seq = spec.sequences()[0]\n"
    "R, base, tasks = continual.cl_matrix(df, seq.sequence_id)\n"
    "print(continual.format_matrix(R, base, tasks))\n"
    "ax = plots.cl_heatmap(R, tasks, base, title=seq.sequence_id)",
    "summary = continual.cl_summary(df)\nprint(continual.SIGN_NOTE)\n"
    "axes = plots.cl_metric_bars(summary)\nsummary",
    "## Mode connectivity between the adapters of task 1 and task 2\nLosses along "
    "$(1-a)\\,\\theta_1 + a\\,\\theta_2$ with A and B interpolated (LoRA space) and with the merged "
    "updates $\\Delta W = sBA$ interpolated; the barrier is the peak above the straight line between "
    "the end points.",
    "a1, a2 = (continual.adapter_dir(OUT, seq, k) for k in (1, 2))\n"
    "res, notes = landscape.connect_adapters(a1, a2, points=5, n_blocks=8)\n"
    "axes = plots.connectivity_curves(res.curves)\nres.barriers",
    "## Sharpness around the final adapter\nLoss along filter-normalised random directions (Li et al. 2018), "
    "the mean rise at radius 0.05, the worst case in a ball of radius rho (SAM's view) and Hutchinson's "
    "estimate of the Hessian trace, in both spaces, on 4 training blocks of the last task.",
    "final = landscape.load_adapter(continual.adapter_dir(OUT, seq, 3))\n"
    "blocks = torch.from_numpy(final.blocks()[0][:4])\n"
    "rows = []\n"
    "for kind in landscape.SPACES:\n"
    "    space = landscape.make_space(final.model, kind)\n"
    "    rows.append(landscape.sharpness_report(space, blocks, eps=0.05, n_directions=4, rho=0.05, ascent_steps=2,\n"
    "                                           hutchinson=4 if kind == \"lora\" else 0))\n"
    "pd.DataFrame(rows)",
    "space = landscape.make_space(final.model, \"lora\")\n"
    "loss_fn, theta = space.loss_fn(blocks), space.point()\n"
    "curve = landscape.curve_1d(loss_fn, theta, space.reference(theta), np.linspace(-1, 1, 7), n_directions=3)\n"
    "ax = plots.sharpness_curves(curve, title=\"LoRA space: 1-D curves\")",
    "surface = landscape.surface_2d(loss_fn, theta, space.reference(theta), np.linspace(-1, 1, 5))\n"
    "ax = plots.loss_surface(surface, title=\"LoRA space: 2-D surface\")",
    "## Sharpness against forgetting\nEach adapter of both sequences (after each task) is one point: its "
    "eps-sharpness on its own task's training blocks against the rise of the forgetting loss $L_f$ on the "
    "reference since the base model. Six correlated points only illustrate the call; for the test of "
    "Li et al.'s claim, run a sweep with `[train] save_adapter = true` and `forgetting-laws "
    "sharpness-vs-forgetting RUNS_DIR`.",
    "points = []\n"
    "for s in spec.sequences():\n"
    "    lf = df[(df.sequence_id == s.sequence_id) & (df.metric == \"forget_loss\")].set_index(\"after_task\").value\n"
    "    for k in range(1, 4):\n"
    "        ad = landscape.load_adapter(continual.adapter_dir(OUT, s, k))\n"
    "        sp = landscape.make_space(ad.model, \"lora\")\n"
    "        rep = landscape.sharpness_report(sp, torch.from_numpy(ad.blocks()[0][:4]), n_directions=4, ascent_steps=0)\n"
    "        points.append({\"method\": s.spec.method.name, \"rank\": k, \"eps_sharpness\": rep[\"eps_sharpness\"],\n"
    "                       \"forgetting\": lf[k] - lf[0]})\n"
    "table = pd.DataFrame(points)\n"
    "corr = landscape.rank_correlation(table.eps_sharpness, table.forgetting, bootstrap=200)\n"
    "ax = plots.sharpness_scatter(table, corr)  # labels r1..r3: the task index here\ncorr",
]

PLANNING = [
    "# Planning a fine-tune from a pilot\n\nBefore paying for a long fine-tune, run a short pilot (the built-in "
    "`pilot` spec: ranks 1-16 x 60 steps on the embedded default), fit the laws to it, and let them predict "
    "larger ranks and longer runs, each with a prediction interval; pick a setting for a target; then run "
    "that setting and check the prediction. The pilot's runs and one verification are committed in "
    "`examples/pilot-runs/`; `docs/planning.md` is the same walk-through from the shell.",
    SETUP.replace("../examples/demo-runs", "../examples/pilot-runs").replace("# The runs of the project's own demo sweep",
                                                                            "# The project's own pilot sweep") +
    "\nimport pandas as pd\n"
    "# Adam's early transient left out, as the paper does: fitted from step 1, a run's rows correlate so much\n"
    "# that the laws give no prediction interval on this pilot, and plan refuses (try it).\n"
    "POLICY = POLICY.updated(min_step=8)",
    "df = fl.load_runs(RUNS)\n"
    "df.groupby('rank').agg(P=('trainable_params', 'first'), steps=('step', 'max'), ft_loss=('ft_loss', 'last'),\n"
    "                       forget_loss=('forget_loss', 'last'), wall_s=('wall_s', 'last'))",
    "## Predict over ranks x steps\nEach candidate gets predicted $L_{ft}$ and $L_f$ with 95% prediction "
    "intervals, the gain and the forgetting rise over the base model, CPU time from the pilot's own steps, "
    "and how many decades of $P$ and $N$ it lies beyond the pilot. Candidates more than "
    "`max_extrapolation` decades out are never recommended.",
    "p = fl.plan(df, ranks=[1, 2, 4, 8, 16, 32, 64], steps=[30, 60, 120, 240], policy=POLICY)\nprint(p.report())",
    "p.candidates[['rank', 'steps', 'ft_loss', 'ft_lo', 'ft_hi', 'forget_loss', 'forget_lo', 'forget_hi', 'cpu_s',\n"
    "              'dP', 'dN', 'supported']].round(4)",
    "axes = p.plot()",
    "## A target\nThe setting predicted to reach a fine-tuning loss with the least forgetting; a target "
    "beyond what the pilot supports is refused with the closest candidate.",
    "target = 3.15\n"
    "chosen = fl.plan(df, ranks=[1, 2, 4, 8, 16, 32, 64], steps=[30, 60, 120, 240], target_ft=target, policy=POLICY,\n"
    "                 fits=p.fits)  # the laws fitted once, reused\n"
    "print(chosen.report())",
    "from forgetting_laws.analyse.plan import PlanError\n"
    "try:\n    fl.plan(df, ranks=[1, 2, 4, 8, 16, 32, 64], steps=[30, 60, 120, 240], target_ft=2.9, policy=POLICY, fits=p.fits)\n"
    "except PlanError as err:\n    print(err)",
    "## Verify\n`forgetting-laws plan RUNS_DIR ... --verify` runs the recommended setting with the pilot's spec "
    "(only the rank and the steps change) and records whether its measured losses fall inside the predicted "
    "intervals, in `RUNS_DIR/_plans/verifications.jsonl`: repeated plans build a calibration history. The "
    "committed record: rank 64 for 120 steps, predicted from ranks 1-16 x 60 steps.",
    "history = pd.read_json(RUNS / '_plans' / 'verifications.jsonl', lines=True)\n"
    "pd.DataFrame([{'rank': h['rank'], 'steps': h['steps'], 'loss': k, **h[k]} for _, h in history.iterrows()\n"
    "              for k in ('ft', 'forget')]).round(4)",
]

NOTEBOOKS = {
    "quickstart.ipynb": [
        "# Quickstart: load a sweep, fit the laws, plot\n\nThe demo sweep fine-tuned SmolLM2-135M with "
        "LoRA at four ranks on news text, probing forgetting on Python's documentation.",
        SETUP,
        "df = fl.load_runs(RUNS)\ndf[['rank', 'step', 'trainable_params', 'ft_loss', 'forget_loss', 'agreement']].head(12)",
        "## The inverse-linear law (Kalajdzievski eq. 4)\nForgetting rises as the fine-tuning loss falls: "
        "$L_f = s - c\\,L_{ft}$. With four runs there are too few for a bootstrap over runs, so the "
        "intervals are asymptotic, widened for the correlation of a run's rows; the report says so.",
        "il = fit.fit(df, 'inverse_linear', x={'L_ft': 'ft_loss'}, y='forget_loss', policy=POLICY)\n"
        "print(il.report())",
        "ax = plots.forgetting_vs_ft(df[df.step >= POLICY.min_step], il)",
        "## Does the law hold? Its alternatives\nPer-run lines, a $\\log P$ term and a curvature term, by F "
        "test and AIC: at matched $L_{ft}$, does forgetting still depend on the rank?",
        "from forgetting_laws.analyse.alternatives import inverse_linear_alternatives\n"
        "print(inverse_linear_alternatives(df, POLICY))",
        "## Forgetting as a power law in parameters and steps\nFit $L_f(P, N)$ and predict a rank and step "
        "count that were not run: the band of the mean curve and the prediction interval for a new "
        "measurement, when the data allow them.",
        "lf = fit.fit(df, 'kalajdzievski_forget', x={'P': 'trainable_params', 'N': 'step'}, y='forget_loss',\n"
        "             policy=POLICY)\n"
        "P_new, N_new = df.trainable_params.max() * 2, df.step.max() * 2\n"
        "print(f'predicted L_f at P={P_new:.3g}, N={N_new}: {float(lf.predict(P=P_new, N=N_new)):.4f}')\n"
        "try:\n"
        "    print('prediction interval', lf.prediction_interval(P=P_new, N=N_new))\n"
        "except ValueError as err:  # FitDataError: the data do not support an interval\n"
        "    print(err)\n"
        "print(lf.interval_method, '-', lf.interval_note)\nlf.unidentified",
        "ax = plots.trajectories(df, lf, 'forget_loss', fit_from=POLICY.min_step)",
    ],
    "fitting.ipynb": [
        "# Fitting: custom laws, held-out validation, intervals, comparing laws by AIC",
        SETUP + "\nimport numpy as np\ndf = fl.load_runs(RUNS)",
        "## A custom law\nAny numpy function becomes a law; here forgetting grows as a power of the steps, "
        "with no dependence on P. Without `grid=`, the start grid is log-spaced for the positive parameters.",
        "def steps_only(N, s, c, beta):\n    return s - c * N ** (-beta)\n\n"
        "steps_law = laws.from_function(steps_only, 'steps_only', inputs=['N'], positive_inputs=['N'],\n"
        "                               bounds={'c': (0, None), 'beta': (0, 3)}, linear=['s', 'c'])\n"
        "r_steps = fit.fit(df, steps_law, x={'N': 'step'}, y='forget_loss', policy=POLICY)\nr_steps.params",
        "## Held-out validation\nFit without the largest rank and ask how well the law predicts it "
        "(absolute relative error, ARE), and how often its prediction interval covers the held-out points.",
        "r_full = fit.fit(df, 'kalajdzievski_forget', x={'P': 'trainable_params', 'N': 'step'}, y='forget_loss',\n"
        "                 policy=POLICY)\n"
        "r_hold = fit.fit(df, 'kalajdzievski_forget', x={'P': 'trainable_params', 'N': 'step'}, y='forget_loss',\n"
        "                 policy=POLICY, holdout='rank:largest')\nr_hold.metrics['holdout']",
        "## Comparing laws by AIC\nLower is better; a difference above ~10 is decisive.",
        "import pandas as pd\npd.DataFrame({name: {'AIC': r.metrics['aic'], 'BIC': r.metrics['bic'], 'R2': r.metrics['r2'],\n"
        "                                 'parameters': len(r.params)}\n"
        "              for name, r in {'steps_only': r_steps, 'kalajdzievski_forget': r_full}.items()}).T",
        "## Intervals\nWith at least five runs the intervals come from a bootstrap that resamples whole runs "
        "(checkpoints of one run are correlated); with fewer, from the covariance, widened by the design "
        "effect of correlated rows, or none when the runs cannot support one.",
        "r_steps.interval_method, r_steps.interval_note, r_steps.ci",
    ],
    "paper_figures.ipynb": [
        "# The paper-style figures\nEvery figure of the report, from the runs folder, through the same code "
        "as `forgetting-laws figures`.",
        SETUP + "\nimport tempfile\nfrom forgetting_laws.analyse.standard import FIGURES, fit_sweep, write_figures",
        "df = fl.load_runs(RUNS)\nfits = fit_sweep(df, POLICY)\n"
        "{name: round(r.metrics['r2'], 4) for name, r in fits.items()}, fits.skipped",
        "out = Path(tempfile.mkdtemp())\nwritten = write_figures(df, fits, out)\n"
        "expected = {name for name, f in FIGURES.items() if f.available(df, fits)}  # some figures need probes or runs\n"
        "assert set(written) == expected, expected - set(written)\nsorted(written)",
        "from IPython.display import Image\nImage(filename=str(written['fig2_forgetting_vs_ft'][0]))",
        "Image(filename=str(written['fig3_trajectories_forget'][0]))",
    ],
    "continual_landscape.ipynb": CONTINUAL_LANDSCAPE,
    "planning.ipynb": PLANNING,
}


def build(names: list[str] | None = None) -> None:
    """Write the named notebooks (all by default), without outputs."""
    for name in names or NOTEBOOKS:
        cells = NOTEBOOKS[name]
        nb = new_notebook(cells=[new_markdown_cell(c) if c.startswith("#") else new_code_cell(c) for c in cells])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    import sys

    build(sys.argv[1:] or None)
