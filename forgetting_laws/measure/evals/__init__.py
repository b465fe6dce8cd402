"""Downstream forgetting through lm-evaluation-harness: task accuracy, agreement with the base
model's answers, and refusal forgetting (Kalajdzievski 2024's ARC-Challenge and AdvBench checks).

``lm_eval`` is an optional dependency (``pip install 'forgetting-laws[eval]'``), imported only
when a probe runs. The shipped offline tasks live in ``tasks/`` (``fl_arc_mini``, ``fl_refusal``),
their data in ``data/``; :mod:`.refusal` holds the refusal rule and imports nothing heavy.
"""

from .harness import TASKS_DIR, check_probes, check_tasks, list_tasks, make_probers, require_lm_eval
from .refusal import REFUSAL_MARKERS, is_refusal

__all__ = ["TASKS_DIR", "check_probes", "check_tasks", "list_tasks", "make_probers", "require_lm_eval", "REFUSAL_MARKERS",
           "is_refusal"]
