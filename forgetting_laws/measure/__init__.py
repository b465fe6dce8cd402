"""The measuring half: specs, models, corpora, probes, training, methods, sweeps and executors.

It writes the runs folder that the analysing half (:mod:`forgetting_laws.analyse`) reads through
:mod:`forgetting_laws.store`. Importing this package does not import torch; a run does.
"""
