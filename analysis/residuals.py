"""Regenerate the residual diagnostics of the three laws.

Usage: python analysis/residuals.py RUNS_DIR [-o FIGURES_DIR] [analysis policy options: --min-step, --bootstrap, --loss, ...]
"""

from forgetting_laws.analyse.standard import figure_script

if __name__ == "__main__":
    figure_script("residuals")
