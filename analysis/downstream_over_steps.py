"""Regenerate the downstream_over_steps figure (needs a sweep with [probe.lm_eval] / [probe.refusal]).

Usage: python analysis/downstream_over_steps.py RUNS_DIR [-o FIGURES_DIR]
"""

from forgetting_laws.analyse.standard import figure_script

if __name__ == "__main__":
    figure_script("downstream_over_steps")
