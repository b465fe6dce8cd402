"""forgetting-laws: measure, fit, predict and mitigate forgetting when LLMs are fine-tuned with LoRA.

The public API, one import away::

    import forgetting_laws as fl
    df = fl.load_runs("demo-out/runs")                      # a runs folder as one DataFrame
    res = fl.fit(df, "inverse_linear", x={"L_ft": "ft_loss"}, y="forget_loss")
    fl.plots.forgetting_vs_ft(df, res)
    fl.plan(fl.load_runs("runs/pilot"), target_ft=3.3)       # predict and recommend a fine-tune

Names are imported when first used, so ``import forgetting_laws`` is quick and never imports
torch: fitting and figures work without a GPU stack; only the measuring functions
(``run_sweep``, ``load_spec``, the ``register_*`` decorators) load the measuring half.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> "module:attribute" (attribute None: the module itself)
_API = {
    "load_runs": "forgetting_laws.store:load_runs",
    "fit": "forgetting_laws.analyse.fit:fit",
    "fit_arrays": "forgetting_laws.analyse.fit:fit_arrays",
    "FitResult": "forgetting_laws.analyse.result:FitResult",
    "AnalysisPolicy": "forgetting_laws.analyse.policy:AnalysisPolicy",
    "DEFAULT_POLICY": "forgetting_laws.analyse.policy:DEFAULT_POLICY",
    "fit_sweep": "forgetting_laws.analyse.standard:fit_sweep",
    "compare": "forgetting_laws.analyse.compare:compare",
    "plan": "forgetting_laws.analyse.plan:plan",
    "laws": "forgetting_laws.analyse.laws:",
    "plots": "forgetting_laws.analyse.plots:",
    "load_spec": "forgetting_laws.measure.spec:load_spec",
    "run_sweep": "forgetting_laws.measure.sweep:run_sweep",
    "register_corpus": "forgetting_laws.measure.corpora:register_corpus",
    "register_model": "forgetting_laws.measure.models:register_model",
    "register_method": "forgetting_laws.measure.methods:register_method",
    "register_executor": "forgetting_laws.measure.executors:register_executor",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'forgetting_laws' has no attribute {name!r}")
    module, _, attr = _API[name].partition(":")
    value = importlib.import_module(module)
    value = getattr(value, attr) if attr else value
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
