"""Regenerate the residual diagnostics of the three laws.

Usage: python analysis/residuals.py RUNS_DIR [-o FIGURES_DIR] [--bootstrap 200] [--min-step 1]
"""

from forgetting_laws.analyse.standard import figure_script

if __name__ == "__main__":
    figure_script("residuals")
