"""Regenerate the held-out-steps extrapolation of L_f(P, N).

Usage: python analysis/holdout_step.py RUNS_DIR [-o FIGURES_DIR] [analysis policy options: --min-step, --bootstrap, --loss, ...]
"""

from forgetting_laws.analyse.standard import figure_script

if __name__ == "__main__":
    figure_script("holdout_step")
