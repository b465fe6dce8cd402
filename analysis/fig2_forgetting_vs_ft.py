"""Regenerate the paper's Figure 2: forgetting against fine-tuning loss with the inverse-linear fit.

Usage: python analysis/fig2_forgetting_vs_ft.py RUNS_DIR [-o FIGURES_DIR] [analysis policy options: --min-step, --bootstrap, --loss, ...]
"""

from forgetting_laws.analyse.standard import figure_script

if __name__ == "__main__":
    figure_script("fig2_forgetting_vs_ft")
