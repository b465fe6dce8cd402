"""Write the notebooks from their cell sources (run: python notebooks/_build.py)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
SETUP = '''import os
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import forgetting_laws as fl
from forgetting_laws import fit, laws
# The runs of the project's own demo sweep, committed under examples/; point RUNS elsewhere for yours.
RUNS = Path(os.environ.get("FORGETTING_LAWS_RUNS", "../examples/demo-runs"))
BOOT = int(os.environ.get("FORGETTING_LAWS_BOOTSTRAP", "100"))
# Leave out Adam's early transient, as the paper leaves out its first 50 of 260 steps.
MIN_STEP = 8'''

NOTEBOOKS = {
    "quickstart.ipynb": [
        "# Quickstart: load a sweep, fit the laws, plot\n\nThe demo sweep fine-tuned SmolLM2-135M with "
        "LoRA at four ranks on news text, probing forgetting on Python's documentation.",
        SETUP,
        "df = fl.load_runs(RUNS)\ndf[['rank', 'step', 'trainable_params', 'ft_loss', 'forget_loss', 'agreement']].head(12)",
        "## The inverse-linear law (Kalajdzievski eq. 4)\nForgetting rises as the fine-tuning loss falls: "
        "$L_f = s - c\\,L_{ft}$.",
        "il = fit.fit(df[df.step >= MIN_STEP], 'inverse_linear', x={'L_ft': 'ft_loss'}, y='forget_loss', bootstrap=BOOT)\n"
        "print(il.report())",
        "from forgetting_laws import plots\nax = plots.forgetting_vs_ft(df[df.step >= MIN_STEP], il)",
        "## Forgetting as a power law in parameters and steps\nFit $L_f(P, N)$ and predict a rank and step "
        "count that were not run, with a bootstrap interval.",
        "lf = fit.fit(df, 'kalajdzievski_forget', x={'P': 'trainable_params', 'N': 'step'}, y='forget_loss',\n"
        "             min_step=MIN_STEP, bootstrap=BOOT)\n"
        "P_new, N_new = df.trainable_params.max() * 2, df.step.max() * 2\n"
        "lo, hi = lf.predict_interval(P=P_new, N=N_new)\n"
        "print(f'predicted L_f at P={P_new:.3g}, N={N_new}: {float(lf.predict(P=P_new, N=N_new)):.4f} '\n"
        "      f'(95% CI {float(lo):.4f} to {float(hi):.4f})')\nlf.warnings",
        "ax = plots.trajectories(df, lf, 'forget_loss', fit_from=MIN_STEP)",
    ],
    "fitting.ipynb": [
        "# Fitting: custom laws, held-out validation, bootstrap, comparing laws by AIC",
        SETUP + "\nimport numpy as np\ndf = fl.load_runs(RUNS)\nlate = df[df.step >= MIN_STEP]",
        "## A custom law\nAny numpy function becomes a law; here forgetting grows as a power of the steps, "
        "with no dependence on P.",
        "def steps_only(N, s, c, beta):\n    return s - c * N ** (-beta)\n\n"
        "steps_law = laws.from_function(steps_only, 'steps_only', inputs=['N'], positive_inputs=['N'],\n"
        "                               bounds={'c': (0, None), 'beta': (0, 3)},\n"
        "                               grid={'s': [1.0, 2.0], 'c': [0.1, 1.0], 'beta': [0.1, 0.5, 1.0]})\n"
        "r_steps = fit.fit(late, steps_law, x={'N': 'step'}, y='forget_loss', bootstrap=BOOT)\nr_steps.params",
        "## Held-out validation\nFit without the largest rank and ask how well the law predicts it "
        "(absolute relative error, ARE).",
        "r_full = fit.fit(late, 'kalajdzievski_forget', x={'P': 'trainable_params', 'N': 'step'}, y='forget_loss',\n"
        "                 bootstrap=BOOT)\n"
        "r_hold = fit.fit(late, 'kalajdzievski_forget', x={'P': 'trainable_params', 'N': 'step'}, y='forget_loss',\n"
        "                 bootstrap=0, holdout='rank:largest')\nr_hold.metrics['holdout']",
        "## Comparing laws by AIC\nLower is better; a difference above ~10 is decisive.",
        "import pandas as pd\npd.DataFrame({name: {'AIC': r.metrics['aic'], 'BIC': r.metrics['bic'], 'R2': r.metrics['r2'],\n"
        "                                 'parameters': len(r.params)}\n"
        "              for name, r in {'steps_only': r_steps, 'kalajdzievski_forget': r_full}.items()}).T",
        "## Bootstrap\nWhole runs are resampled (checkpoints of one run are correlated); the exponents' "
        "distributions show what the data pin down.",
        "from forgetting_laws import plots\naxes = plots.bootstrap_params(r_full)\nr_full.ci",
    ],
    "paper_figures.ipynb": [
        "# The paper-style figures\nEvery figure of the report, from the runs folder, through the same code "
        "as `forgetting-laws figures`.",
        SETUP + "\nimport tempfile\nfrom forgetting_laws.study import FIGURES, fit_sweep, write_figures",
        "df = fl.load_runs(RUNS)\nfits = fit_sweep(df, bootstrap=BOOT, min_step=MIN_STEP)\n"
        "{name: round(r.metrics['r2'], 4) for name, r in fits.items()}",
        "out = Path(tempfile.mkdtemp())\nwritten = write_figures(df, fits, out, min_step=MIN_STEP)\n"
        "expected = {name for name, f in FIGURES.items() if f.available(df, fits)}  # lm_eval figures need their probes\n"
        "assert set(written) == expected, expected - set(written)\nsorted(written)",
        "from IPython.display import Image\nImage(filename=str(written['fig2_forgetting_vs_ft'][0]))",
        "Image(filename=str(written['fig3_trajectories_forget'][0]))",
    ],
}


def build() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=[new_markdown_cell(c) if c.startswith("#") else new_code_cell(c) for c in cells])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    build()
