"""A model alias whose training fails on demand: fault injection for the Ray executor tests.

Ray workers import this module through ``FORGETTING_LAWS_PLUGINS=ray_fault`` (with this folder
on PYTHONPATH), as a user's own registrations would be. The folder
``$FORGETTING_LAWS_TEST_FAULTS`` holds ``fails`` (a number) and ``attempts.log``: each run attempt
that reaches its first training forward appends a line to the log, and the first ``fails``
attempts raise. Loading and probing never fail, so the sweep's preflight passes and the failure
happens inside the Ray task. (Files, not environment variables, set the fault, so every test
shares one runtime environment and Ray reuses its workers.)
"""

import os
from pathlib import Path

from forgetting_laws.measure.models import load_model, register_model

FAULTS_ENV = "FORGETTING_LAWS_TEST_FAULTS"


def set_faults(folder: Path, fails: int) -> Path:
    """Make the next ``fails`` attempts fail (counting afresh); returns the attempts log."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fails").write_text(str(fails))
    (folder / "attempts.log").write_text("")
    return folder / "attempts.log"


def _first_training_forward(module, args):
    if not module.training or getattr(module, "_attempt_logged", False):
        return
    module._attempt_logged = True
    folder = Path(os.environ[FAULTS_ENV])
    with (folder / "attempts.log").open("a") as f:
        f.write(f"{os.getpid()}\n")
    attempt = len((folder / "attempts.log").read_text().splitlines())
    if attempt <= int((folder / "fails").read_text()):
        raise RuntimeError(f"injected failure on attempt {attempt}")


@register_model("tiny-flaky-llama", help="tiny-random-llama whose training raises on its first N attempts (tests)")
def _tiny_flaky_llama(dtype):
    model, tok = load_model("tiny-random-llama", dtype)
    model.register_forward_pre_hook(_first_training_forward)
    return model, tok
