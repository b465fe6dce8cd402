"""Regenerate Figure 3's forgetting panel: L_f trajectories by rank against the L_f(P, N) fit.

Usage: python analysis/fig3_trajectories_forget.py RUNS_DIR [-o FIGURES_DIR] [analysis policy options: --min-step, --bootstrap, --loss, ...]
"""

from forgetting_laws.analyse.standard import figure_script

if __name__ == "__main__":
    figure_script("fig3_trajectories_forget")
