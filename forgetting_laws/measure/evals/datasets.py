"""Datasets of the shipped lm_eval tasks, built from the package's files (no network, no cache).

The task YAMLs under ``tasks/`` name these functions as ``custom_dataset``; lm_eval calls them
with the task's metadata as keyword arguments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import ConfigError

__all__ = ["DATA_DIR", "fl_arc_mini", "refusal_prompts", "read_prompts"]

DATA_DIR = Path(__file__).parent / "data"
ADVBENCH = "walledai/AdvBench"  # 520 harmful behaviours, column "prompt" (Zou et al. 2023)


def _dataset_dict(rows: list[dict]) -> Any:
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fl_arc_mini(**_: Any) -> Any:
    """The ``fl_arc_mini`` questions: 50 ARC-format multiple-choice questions written for this project."""
    return _dataset_dict(_jsonl(DATA_DIR / "fl_arc_mini.jsonl"))


def read_prompts(prompts: str = "builtin") -> list[str]:
    """The refusal prompts: ``"builtin"``, ``"advbench"`` (needs network) or a .txt / .jsonl file.

    A .txt file holds one prompt per line; a .jsonl file one object per line with a ``prompt``
    (or ``goal``, AdvBench's CSV column) field.
    """
    if prompts == "builtin":
        return [r["prompt"] for r in _jsonl(DATA_DIR / "refusal_prompts.jsonl")]
    if prompts == "advbench":
        return _advbench()
    path = Path(prompts)
    if not path.is_file():
        raise ConfigError(f"probe.refusal.prompts = {prompts!r} is no file; use 'builtin', 'advbench' "
                          "or a path to a .txt (one prompt a line) or .jsonl file")
    if path.suffix == ".jsonl":
        rows = _jsonl(path)
        missing = [i for i, r in enumerate(rows) if not (r.get("prompt") or r.get("goal"))]
        if missing:
            raise ConfigError(f"probe.refusal.prompts = {prompts!r}: line {missing[0] + 1} has no 'prompt' field")
        return [r.get("prompt") or r["goal"] for r in rows]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _advbench() -> list[str]:
    import datasets

    try:
        return list(datasets.load_dataset(ADVBENCH, split="train")["prompt"])
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same way out
        raise ConfigError(f"probe.refusal.prompts = 'advbench' needs the Hugging Face hub ({ADVBENCH}), "
                          f"which failed: {exc}; use prompts = 'builtin' or a local file offline") from exc


def refusal_prompts(prompts: str = "builtin", **_: Any) -> Any:
    """The ``fl_refusal`` dataset: one row (``prompt``) per harmful request."""
    return _dataset_dict([{"prompt": p} for p in read_prompts(prompts)])
