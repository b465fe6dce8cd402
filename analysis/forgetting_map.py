"""Regenerate the predicted-forgetting contour map over (P, N) with the measured runs.

Usage: python analysis/forgetting_map.py RUNS_DIR [-o FIGURES_DIR] [analysis policy options: --min-step, --bootstrap, --loss, ...]
"""

from forgetting_laws.analyse.standard import figure_script

if __name__ == "__main__":
    figure_script("forgetting_map")
