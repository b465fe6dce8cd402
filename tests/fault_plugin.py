"""A test plugin (``FORGETTING_LAWS_PLUGINS=fault_plugin``) that injects one fault into a sweep.

``FL_FAULT`` names it:

- ``kill-after-running-sidecar``: SIGKILL once the run's "running" sidecar is written;
- ``kill-after-checkpoint:N``: SIGKILL once checkpoint N is complete on disk;
- ``kill-after-result``: SIGKILL between the final parquet and the final sidecar;
- ``kill-after-sidecar``: SIGKILL between the final sidecar and the checkpoint clean-up;
- ``raise-rank:R``: the run of LoRA rank R raises mid-way (after its first probe).

``FL_RUN_LOG`` (a path): every run start is appended to it (one run id a line).
"""

import os
import signal
from pathlib import Path

from forgetting_laws.measure import train

FAULT = os.environ.get("FL_FAULT", "")
LOG = os.environ.get("FL_RUN_LOG")


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_write_json, _write_rows, _run_one = train.write_json, train.write_rows, train.run_one
_on_save, _record = train.ProbeCallback.on_save, train.ProbeCallback.record


def write_json(path, obj):
    _write_json(path, obj)
    status = obj.get("status")
    if (FAULT == "kill-after-running-sidecar" and status == "running") or \
            (FAULT == "kill-after-sidecar" and status in ("complete", "diverged")):
        _kill()


def write_rows(path, rows, *args):
    _write_rows(path, rows, *args)
    if FAULT == "kill-after-result" and Path(path).name != "rows.parquet":
        _kill()


def on_save(self, args, state, control, **kw):
    out = _on_save(self, args, state, control, **kw)
    if FAULT == f"kill-after-checkpoint:{state.global_step}":
        _kill()
    return out


def record(self, step):
    _record(self, step)
    if FAULT == f"raise-rank:{self.spec.lora.rank}" and step > 0:
        raise RuntimeError(f"injected fault in the run of rank {self.spec.lora.rank}")


def run_one(spec, runs_dir, *args, **kwargs):
    if LOG:
        with open(LOG, "a") as f:
            f.write(spec.run_id + "\n")
    return _run_one(spec, runs_dir, *args, **kwargs)


train.write_json, train.write_rows, train.run_one = write_json, write_rows, run_one
train.ProbeCallback.on_save, train.ProbeCallback.record = on_save, record
