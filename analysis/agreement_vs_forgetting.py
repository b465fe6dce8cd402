"""Regenerate the agreement_vs_forgetting figure (needs a sweep with [probe.lm_eval] / [probe.refusal]).

Usage: python analysis/agreement_vs_forgetting.py RUNS_DIR [-o FIGURES_DIR]
"""

from forgetting_laws.analyse.standard import figure_script

if __name__ == "__main__":
    figure_script("agreement_vs_forgetting")
