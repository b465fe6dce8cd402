"""Arms of a method comparison: a method together with the settings that distinguish its runs.

A sweep may run one method with several settings (SAM at two rho, I-LoRA at two lambda); each
setting is an arm of its own, compared on its own. Settings are the columns a method adds after
the schema's (``sam_rho``, ``ilora_ema``, ...). Nothing here imports torch.

Example
-------
>>> df = pd.DataFrame({"run_id": ["a", "b", "c"], "method": ["lora", "sam", "sam"], "sam_rho": [None, 0.05, 0.5]})
>>> arm_labels(df).tolist()
['lora', 'sam (rho=0.05)', 'sam (rho=0.5)']
"""

from __future__ import annotations

import pandas as pd

from ..store import SCHEMA

__all__ = ["arm_labels", "setting_columns"]


def setting_columns(df: pd.DataFrame) -> list[str]:
    """The columns holding method settings (after the schema's; not the downstream probes')."""
    return [c for c in df.columns if c not in SCHEMA and not c.startswith(("lmeval_", "refusal_"))]


def arm_labels(df: pd.DataFrame) -> pd.Series:
    """Each row's arm: its method, plus the settings that vary among that method's runs.

    ``sam`` alone when one rho was run; ``sam (rho=0.05)`` and ``sam (rho=0.5)`` when two were.
    """
    labels = df["method"].astype(str).copy()
    settings = setting_columns(df)
    for method, g in df.groupby("method", sort=False):
        per_run = g.drop_duplicates("run_id")
        varying = [c for c in settings if per_run[c].notna().any() and per_run[c].nunique() > 1]
        if varying:
            text = g[varying].apply(lambda row: ", ".join(f"{_short(c)}={row[c]}" for c in varying), axis=1)
            labels[g.index] = f"{method} (" + text + ")"
    return labels


def _short(column: str) -> str:
    """``sam_rho`` -> ``rho``, ``ilora_ema`` -> ``ema``: the setting's own name."""
    return column.split("_", 1)[1] if column.startswith(("sam_", "ilora_")) else column
