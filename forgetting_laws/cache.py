"""Where the toolkit keeps what it computes once: token blocks, base-model targets, model copies.

Nothing here imports torch, so corpora, the compiler settings and the lm_eval probes reach the
cache without a training stack.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "CACHE_ENV"]

#: Environment variable that moves the cache (tests point it at a temporary folder).
CACHE_ENV = "FORGETTING_LAWS_CACHE"


def cache_dir() -> Path:
    """Root of the toolkit's on-disk cache (``$FORGETTING_LAWS_CACHE`` or ``~/.cache/forgetting-laws``)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "forgetting-laws"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
