"""Two sweep processes that take turns, one run at a time (``bench_compile.py``'s paired sweeps).

Each of the two ``forgetting-laws sweep`` processes imports this module through
``FORGETTING_LAWS_PLUGINS``; they share the folder ``$FL_BENCH_TURNS``. Only the process that
holds the turn works: it takes the turn on import (before preflight loads the model), gives it
to the other process after each run and takes it back before its next one. Both sweeps then see
the same machine, run by run, so a drift in the machine's speed (on a shared host it can halve
the matmul rate for minutes) falls on both. A process's sweep time is its wall time less the
seconds it waited, which it writes to ``<me>.wait`` when it exits.
"""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path

from forgetting_laws.measure import sweep

DIR = Path(os.environ["FL_BENCH_TURNS"])
ME, OTHER = os.environ["FL_BENCH_ME"], os.environ["FL_BENCH_OTHER"]
TURN = DIR / "turn"
_waited = [0.0]


def _take() -> None:
    t0 = time.perf_counter()
    while TURN.read_text().strip() != ME and not (DIR / f"{OTHER}.done").exists():
        time.sleep(0.05)
    _waited[0] += time.perf_counter() - t0


def _give() -> None:
    tmp = DIR / f"turn.{ME}"
    tmp.write_text(OTHER)
    tmp.replace(TURN)  # atomic: the other process never reads a half-written file


@atexit.register
def _done() -> None:
    (DIR / f"{ME}.wait").write_text(repr(_waited[0]))
    (DIR / f"{ME}.done").touch()
    _give()


_run_locked = sweep.run_locked


def _run_locked_in_turn(*args, **kwargs):
    _take()
    try:
        return _run_locked(*args, **kwargs)
    finally:
        _give()


sweep.run_locked = _run_locked_in_turn
_take()
