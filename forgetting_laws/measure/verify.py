"""Pilot -> predict -> verify: run a plan's recommendation and check it against its intervals.

:func:`verify` takes a :class:`~forgetting_laws.analyse.plan.Plan` made from a pilot sweep, runs the
recommended setting with the pilot's own spec (its model, corpora, probes and training settings;
only the rank and the number of steps change) into ``RUNS_DIR/_verify/``, and reports whether the
measured fine-tuning and forgetting losses at the last step fall inside the predicted intervals.
Each verification is appended to ``RUNS_DIR/_plans/verifications.jsonl``, so repeated plans on one
model build a calibration history (:func:`verification_history`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from ..store import load_runs, read_meta, sidecar_path
from .spec import SweepSpec

__all__ = ["verify", "verification_spec", "verification_history", "gpu_cost", "HISTORY"]

#: Where a runs folder keeps its verifications, one JSON object a line.
HISTORY = Path("_plans") / "verifications.jsonl"


def verification_spec(runs_dir: str | Path, rank: int, steps: int) -> SweepSpec:
    """The pilot's spec (from one of its runs' sidecars) at ``rank`` for ``steps`` steps, no grid.

    The probe schedule keeps the pilot's steps and adds ``steps``, so the verification run is
    probed where the pilot was and at its end.
    """
    runs = load_runs(runs_dir)
    meta = read_meta(sidecar_path(runs_dir, str(runs.run_id.iloc[0])))
    if not meta or "spec" not in meta:
        raise ConfigError(f"{runs_dir}: its runs' sidecars hold no spec; verify needs the pilot's runs folder")
    raw = dict(meta["spec"])
    raw["lora"] = {**raw["lora"], "rank": int(rank)}
    probe = dict(raw["probe"])
    if isinstance(probe.get("steps"), list):
        probe["steps"] = sorted({*(s for s in probe["steps"] if s <= steps), int(steps)})
    raw["probe"] = probe
    raw["train"] = {**raw["train"], "max_steps": int(steps)}
    raw["sweep"] = {**raw["sweep"], "name": f"{raw['sweep']['name']}-verify"}
    return SweepSpec.from_dict(raw)


def gpu_cost(runs_dir: str | Path, gpus: tuple[str, ...] = ("a100", "h100"), mfu: float = 0.4):
    """``cost(rank, steps) -> {"GPU-h <gpu>": ...}`` for :func:`~forgetting_laws.analyse.plan.plan`: the
    analytic FLOP model of :mod:`.estimate` applied to the pilot's spec at each candidate, on each
    named GPU at the assumed model FLOP utilisation ``mfu``. None (with the reason as a warning)
    when the model's shape is not known offline."""
    import warnings

    from .estimate import gpu_hours, model_shape, run_flops

    name = verification_spec(runs_dir, 1, 1).base.model.name
    try:
        shape = model_shape(name)
    except ConfigError as exc:
        warnings.warn(f"no GPU-hours in the plan: {exc}", stacklevel=2)
        return None

    def cost(rank: int, steps: int) -> dict:
        (run,) = verification_spec(runs_dir, rank, steps).expand()
        return {f"GPU-h {gpu}": gpu_hours(run_flops(run, shape), gpu, mfu) for gpu in gpus}

    return cost


def verify(plan, runs_dir: str | Path, progress: bool = True) -> dict:
    """Run ``plan.recommended`` with the pilot's spec; compare the last probe with the intervals.

    Returns the verification record (also appended to ``RUNS_DIR/_plans/verifications.jsonl``):
    the setting, the predicted values and intervals, the measured values, whether each interval
    covered its measurement, and the errors relative to the prediction.
    """
    from .sweep import run_sweep

    if plan.recommended is None:
        raise ConfigError("the plan has no recommendation to verify; give it a target (target_ft, max_forgetting, "
                          "max_steps or max_cpu_s)")
    rec = plan.recommended
    runs_dir = Path(runs_dir)
    spec = verification_spec(runs_dir, int(rec["rank"]), int(rec["steps"]))
    out = runs_dir / "_verify"
    run_sweep(spec, out, progress=progress)
    (run,) = spec.expand()
    measured = load_runs(out)
    last = measured[(measured.run_id == run.run_id)].sort_values("step").iloc[-1]
    record = _record(plan, rec, last, run.run_id)
    path = runs_dir / HISTORY
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def _record(plan, rec: pd.Series, last: pd.Series, run_id: str) -> dict:
    out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_id": run_id, "rank": int(rec["rank"]),
           "steps": int(rec["steps"]), "P": float(rec["P"]), "level": plan.level, "dP": float(rec["dP"]),
           "dN": float(rec["dN"]), "target": plan.target, "pilot_ranks": plan.measured["ranks"],
           "pilot_steps": plan.measured["N"][1]}
    for name, col, lo, hi in (("ft", "ft_loss", "ft_lo", "ft_hi"), ("forget", "forget_loss", "forget_lo", "forget_hi")):
        value = float(last[col])
        out[name] = {"predicted": float(rec[col]), "lo": float(rec[lo]), "hi": float(rec[hi]), "measured": value,
                     "covered": bool(rec[lo] <= value <= rec[hi]),
                     "relative_error": (float(rec[col]) - value) / value}
    rise = float(last["forget_loss"]) - plan.base["forget_loss"]
    out["forget"]["rise_measured"] = rise
    out["forget"]["rise_predicted"] = float(rec["forgetting"])
    return out


def verification_history(runs_dir: str | Path) -> pd.DataFrame:
    """Every verification recorded in ``RUNS_DIR``: one row each, with the intervals' hits."""
    path = Path(runs_dir) / HISTORY
    if not path.exists():
        return pd.DataFrame()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.json_normalize(rows)
