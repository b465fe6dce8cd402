"""The analysing half: laws, the fitting engine, fit results, figures and reports.

Nothing here imports torch: a machine without a GPU stack fits laws and draws figures from a
runs folder (:func:`forgetting_laws.load_runs`) or any table of measurements.
"""
