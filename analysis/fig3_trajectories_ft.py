"""Regenerate the paper's Figure 3 (fine-tuning loss): trajectories over steps by rank against the L_ft(P, N) fit.

Usage: python analysis/fig3_trajectories_ft.py RUNS_DIR [-o FIGURES_DIR] [analysis policy options: --min-step, --bootstrap, --loss, ...]
"""

from forgetting_laws.analyse.standard import figure_script

if __name__ == "__main__":
    figure_script("fig3_trajectories_ft")
