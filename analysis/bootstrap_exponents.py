"""Regenerate the bootstrap distributions of the L_f(P, N) exponents.

Usage: python analysis/bootstrap_exponents.py RUNS_DIR [-o FIGURES_DIR] [analysis policy options: --min-step, --bootstrap, --loss, ...]
"""

from forgetting_laws.analyse.standard import figure_script

if __name__ == "__main__":
    figure_script("bootstrap_exponents")
