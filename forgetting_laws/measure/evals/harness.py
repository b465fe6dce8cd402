"""lm-evaluation-harness probes: tasks built once per run, evaluated on the model in memory.

:class:`LmEvalProber` (``[probe.lm_eval]``) and :class:`RefusalProber` (``[probe.refusal]``)
share one life cycle, driven by :mod:`forgetting_laws.measure.train`::

    prober.prepare(base_model)   # before the adapter exists: the base model's answers (cached)
    prober.measure(model)        # at each of its steps: {column: value}
    prober.base_row()            # step 0 with an inert adapter: the base values, no evaluation

Each evaluation wraps the model (PEFT or not) in lm_eval's ``HFLM`` and calls
``lm_eval.evaluator.evaluate`` with a task dict built once, so a probe step costs the model's
forward passes, not task building. The base model's answers are cached under
``cache_dir()/lm_eval`` by (model fingerprint, task, questions, settings).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...errors import ConfigError
from ...cache import cache_dir

__all__ = ["TASKS_DIR", "require_lm_eval", "task_manager", "list_tasks", "check_tasks", "TaskResult",
           "evaluate_tasks", "LmEvalProber", "RefusalProber", "make_probers", "check_probes", "INSTALL_HINT",
           "TRUST_ENV", "task_code", "trusting_task_code"]

TASKS_DIR = Path(__file__).parent / "tasks"
INSTALL_HINT = "pip install 'forgetting-laws[eval]' (or: pip install 'lm_eval>=0.4.13,<0.5')"
LIST_HINT = "list valid names with `forgetting-laws tasks` (or `lm_eval ls tasks`)"
_SKIP_KEYS = {"alias", "name", "sample_len", " ", ""}


#: Set (to 1) by ``--trust-task-code``: task YAMLs of an ``include_path`` may then run Python code.
TRUST_ENV = "FORGETTING_LAWS_TRUST_TASK_CODE"
_CODE_TAG = re.compile(r"!function\b")


def task_code(include_path: str) -> list[str]:
    """``file:line`` of every lm_eval ``!function`` tag (code that loading the task would run)
    in the task YAMLs under ``include_path``."""
    found = []
    for path in sorted(Path(include_path).rglob("*.y*ml")):
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if _CODE_TAG.search(line.split("#", 1)[0]):
                found.append(f"{path}:{i}")
    return found


@contextlib.contextmanager
def trusting_task_code(trust: bool) -> Iterator[None]:
    """Within: task YAMLs of an ``include_path`` may run code (when ``trust``), here and in the
    workers an executor starts (the setting travels in the environment)."""
    before = os.environ.get(TRUST_ENV)
    if trust:
        os.environ[TRUST_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TRUST_ENV, None)
        else:
            os.environ[TRUST_ENV] = before


def _check_include_path(include_path: str) -> None:
    """Refuse an include_path whose task YAMLs run code unless the user trusted it."""
    if not include_path:
        return
    if not Path(include_path).is_dir():
        raise ConfigError(f"probe.lm_eval.include_path = {include_path!r} is no folder of task YAMLs")
    code = task_code(include_path)
    if code and os.environ.get(TRUST_ENV) != "1":
        raise ConfigError(f"probe.lm_eval.include_path = {include_path!r}: {len(code)} task YAML line(s) run "
                          f"Python code through lm_eval's !function ({', '.join(code[:3])}); a spec never runs "
                          "code on its own: read those files, then pass --trust-task-code to run them")


def require_lm_eval() -> None:
    """Raise ImportError with the install command when lm-evaluation-harness is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ImportError(f"[probe.lm_eval] and [probe.refusal] need lm-evaluation-harness: {INSTALL_HINT}")


@functools.lru_cache(maxsize=8)
def task_manager(include_path: str = "", defaults: bool = True, prompts: str | None = None):
    """An lm_eval ``TaskManager`` over the shipped tasks, ``include_path`` and (``defaults``) lm_eval's own.

    Indexing lm_eval's ~15,000 task configs takes seconds, so managers are cached per process and
    :func:`_manager_for` uses one without the defaults when every name is a local task.
    ``prompts`` is passed as task metadata (the ``fl_refusal`` prompt source).
    """
    require_lm_eval()
    _check_include_path(include_path)
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR)] + ([include_path] if include_path else [])
    metadata = {"prompts": prompts} if prompts is not None else None
    return TaskManager(include_path=paths, include_defaults=defaults, metadata=metadata)


def list_tasks(include_path: str = "", match: str = "", defaults: bool = True) -> list[str]:
    """Task, group and tag names lm_eval knows (shipped + ``include_path`` + its own), filtered by ``match``."""
    return [t for t in task_manager(include_path, defaults).all_tasks if match.lower() in t.lower()]


def check_tasks(names: list[str], include_path: str = "", field_name: str = "probe.lm_eval.tasks") -> None:
    """Raise :class:`ConfigError` naming the field, each unknown task and how to list valid ones."""
    _check_include_path(include_path)
    local = set(list_tasks(include_path, defaults=False))
    if all(n in local for n in names):
        return
    known = set(task_manager(include_path).all_tasks)
    bad = [n for n in names if n not in known]
    if bad:
        close = sorted({c for n in bad for c in difflib.get_close_matches(n, known, n=3)})
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ConfigError(f"{field_name} = {names!r}: {', '.join(map(repr, bad))} is not an lm-evaluation-harness "
                          f"task{hint}; {LIST_HINT}; local tasks: {', '.join(sorted(local))}")


def _manager_for(names: list[str], include_path: str = "", prompts: str | None = None):
    check_tasks(names, include_path)
    local = set(list_tasks(include_path, defaults=False))
    return task_manager(include_path, defaults=not all(n in local for n in names), prompts=prompts)


# --------------------------------------------------------------------------- evaluation


@dataclass
class TaskResult:
    """One task evaluated once: its metrics and the answer given to each question.

    ``answers[doc_id]`` is the chosen option (argmax of the options' log-likelihoods) for a
    multiple-choice task, the generated text for a generation task; empty for other kinds.
    """

    metrics: dict[str, float]
    answers: dict[int, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"metrics": self.metrics, "answers": {str(k): v for k, v in self.answers.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "TaskResult":
        return cls(d["metrics"], {int(k): v for k, v in d["answers"].items()})


def _leaves(task_dict: dict) -> Iterator[tuple[str, Any]]:
    """(name, Task) of every leaf task of a ``TaskManager.load`` result (groups expanded)."""
    yield from task_dict["tasks"].items()


def _answer(sample: dict, output_type: str) -> Any:
    resps = sample["filtered_resps"]
    if output_type == "multiple_choice":
        return int(np.argmax([r[0] for r in resps]))  # lm_eval's own `acc` prediction
    if output_type == "generate_until":
        return resps[0] if isinstance(resps, list) else resps
    return None


def _metrics(entry: dict) -> dict[str, float]:
    """lm_eval's ``{"acc,none": 0.5, "acc_stderr,none": ...}`` -> ``{"acc": 0.5}`` (no stderr)."""
    out = {}
    for key, value in entry.items():
        metric, _, filt = key.partition(",")
        if key in _SKIP_KEYS or "_stderr" in metric or isinstance(value, (str, bool)) or value is None:
            continue
        name = metric if filt in ("", "none") else f"{metric}_{filt}"
        out[re.sub(r"[^0-9A-Za-z_]+", "_", name)] = float(value)
    return out


@contextlib.contextmanager
def _quiet_and_seeded() -> Iterator[None]:
    """Keep the training's random streams untouched and lm_eval's logging quiet.

    lm_eval warns on every call about what this module does on purpose (a model object instead
    of a name, a ``custom_dataset``), so only its errors are shown.
    """
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        logger.setLevel(level)


def evaluate_tasks(model, tokenizer, task_dict: dict, limit: int = 0, batch_size: int = 8,
                   chat_template: bool = False) -> dict[str, TaskResult]:
    """Evaluate ``model`` (in memory, PEFT or not) on a prebuilt lm_eval task dict.

    Parameters
    ----------
    model, tokenizer
        A causal LM and its tokenizer; the model is evaluated in eval mode, its mode restored.
    task_dict
        ``TaskManager.load(names)``, built once and reused.
    limit
        Questions per task (0 = all).
    chat_template
        Wrap prompts in the tokenizer's chat template.

    Returns
    -------
    ``{task name: TaskResult}`` for every leaf task, plus group entries (metrics only).
    """
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    try:
        with _quiet_and_seeded():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            out = evaluate(lm, task_dict, limit=limit or None, bootstrap_iters=0, log_samples=True,
                           apply_chat_template=chat_template, verbosity="WARNING")
    finally:
        model.train(was_training)
    types = {name: task.OUTPUT_TYPE for name, task in _leaves(task_dict)}
    results = {name: TaskResult(_metrics(entry)) for name, entry in out["results"].items()}
    for name, samples in out.get("samples", {}).items():
        first_filter = samples[0]["filter"] if samples else None
        results[name].answers = {s["doc_id"]: _answer(s, types.get(name, "")) for s in samples
                                 if s["filter"] == first_filter}
    return results


def _agreement(answers: dict[int, Any], base: dict[int, Any]) -> float:
    """Fraction of questions answered as the base model answered them."""
    shared = [d for d in answers if d in base and answers[d] is not None]
    if not shared:
        return float("nan")
    return float(np.mean([answers[d] == base[d] for d in shared]))


def _task_digest(task, limit: int) -> str:
    """A hash of what a task asks (its rendered questions, options and targets), for cache keys."""
    docs = list(task.eval_docs)[: limit or None]
    h = hashlib.sha1(json.dumps([task.OUTPUT_TYPE, task.config.num_fewshot,
                                 task.config.generation_kwargs], default=str, sort_keys=True).encode())
    for doc in docs:
        parts = [task.doc_to_text(doc), task.doc_to_target(doc)]
        if task.OUTPUT_TYPE == "multiple_choice":
            parts.append(task.doc_to_choice(doc))
        h.update(json.dumps(parts, default=str).encode())
    return h.hexdigest()[:16]


def _cached(path: Path, compute) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
    return value


# --------------------------------------------------------------------------- probers


class LmEvalProber:
    """``[probe.lm_eval]``: the tasks' metrics and, where answers exist, agreement with the base.

    Columns: ``lmeval_<task>_<metric>`` for every metric lm_eval reports (``acc``, ``acc_norm``,
    ...; generation filters other than ``none`` add ``_<filter>``) and ``lmeval_<task>_agree``:
    the fraction of questions where the model picks the base model's answer.
    """

    def __init__(self, settings, tokenizer, model_key: str, steps: list[int]):
        self.settings, self.tokenizer, self.model_key, self.steps = settings, tokenizer, model_key, steps
        with _quiet_and_seeded():
            self.task_dict = _manager_for(settings.tasks, settings.include_path).load(list(settings.tasks))
            for _, task in _leaves(self.task_dict):
                task.set_config(key="num_fewshot", value=settings.num_fewshot)
                task.set_fewshot_seed(seed=1234)
        self.base: dict[str, TaskResult] = {}

    def _evaluate(self, model) -> dict[str, TaskResult]:
        s = self.settings
        return evaluate_tasks(model, self.tokenizer, self.task_dict, s.limit, s.batch_size)

    def prepare(self, base_model) -> None:
        """The base model's results, from the cache or evaluated now (``base_model`` has no adapter)."""
        digest = hashlib.sha1("|".join(f"{n}:{_task_digest(t, self.settings.limit)}"
                                       for n, t in sorted(_leaves(self.task_dict))).encode()).hexdigest()[:16]
        path = cache_dir() / "lm_eval" / f"{self.model_key}-{digest}.json"
        raw = _cached(path, lambda: {k: v.to_json() for k, v in self._evaluate(base_model).items()})
        self.base = {k: TaskResult.from_json(v) for k, v in raw.items()}

    def _row(self, results: dict[str, TaskResult]) -> dict[str, float]:
        row = {}
        for name, res in results.items():
            row.update({f"lmeval_{name}_{m}": v for m, v in res.metrics.items()})
            if self.base.get(name) and self.base[name].answers:
                row[f"lmeval_{name}_agree"] = _agreement(res.answers, self.base[name].answers)
        return row

    def measure(self, model) -> dict[str, float]:
        """The columns for ``model`` (evaluated now)."""
        return self._row(self._evaluate(model))

    def base_row(self) -> dict[str, float]:
        """The columns of the base model itself (agreement 1 by definition)."""
        return self._row(self.base)

    @property
    def columns(self) -> list[str]:
        return list(self.base_row())


class RefusalProber:
    """``[probe.refusal]``: ``refusal_rate`` and ``refusal_lost`` on harmful requests.

    ``refusal_rate`` is the fraction of prompts whose greedy answer is a refusal
    (:func:`forgetting_laws.measure.evals.refusal.is_refusal`); ``refusal_lost`` counts the prompts the
    base model refused that the model no longer refuses (the paper's AdvBench comparison);
    ``refusal_n`` is the number of prompts.
    """

    columns = ["refusal_rate", "refusal_lost", "refusal_n"]

    def __init__(self, settings, tokenizer, model_key: str, steps: list[int]):
        self.settings, self.tokenizer, self.model_key, self.steps = settings, tokenizer, model_key, steps
        self.chat = bool(settings.chat_template and getattr(tokenizer, "chat_template", None))
        with _quiet_and_seeded():
            self.task_dict = _manager_for(["fl_refusal"], prompts=settings.prompts).load(["fl_refusal"])
            self.task = self.task_dict["tasks"]["fl_refusal"]
            self.task.set_config(key="generation_kwargs", value={"max_gen_toks": settings.max_new_tokens},
                                 update=True)
        self.base_refused: dict[int, bool] = {}

    def _refused(self, model) -> dict[int, bool]:
        from .refusal import is_refusal

        s = self.settings
        res = evaluate_tasks(model, self.tokenizer, self.task_dict, s.limit, s.batch_size, self.chat)["fl_refusal"]
        return {d: is_refusal(text) for d, text in res.answers.items()}

    def prepare(self, base_model) -> None:
        """The base model's refusals, from the cache or generated now."""
        key = f"{_task_digest(self.task, self.settings.limit)}-chat{int(self.chat)}"
        path = cache_dir() / "lm_eval" / f"{self.model_key}-refusal-{key}.json"
        raw = _cached(path, lambda: {str(d): r for d, r in self._refused(base_model).items()})
        self.base_refused = {int(d): bool(r) for d, r in raw.items()}

    def _row(self, refused: dict[int, bool]) -> dict[str, float]:
        lost = sum(1 for d, r in self.base_refused.items() if r and not refused.get(d, False))
        return {"refusal_rate": float(np.mean(list(refused.values()))), "refusal_lost": float(lost),
                "refusal_n": float(len(refused))}

    def measure(self, model) -> dict[str, float]:
        return self._row(self._refused(model))

    def base_row(self) -> dict[str, float]:
        return self._row(self.base_refused)


def check_probes(spec) -> None:
    """Check a run's ``[probe.lm_eval]`` task names and ``[probe.refusal]`` prompts before it starts."""
    from .datasets import read_prompts

    require_lm_eval()
    if spec.probe.lm_eval is not None:
        check_tasks(spec.probe.lm_eval.tasks, spec.probe.lm_eval.include_path)
    if spec.probe.refusal is not None and spec.probe.refusal.prompts != "advbench":
        read_prompts(spec.probe.refusal.prompts)


def make_probers(spec, tokenizer, model_key: str) -> list:
    """The run's lm_eval probers (none when the spec has no ``[probe.lm_eval]`` / ``[probe.refusal]``)."""
    p, n = spec.probe, spec.train.max_steps
    made = []
    for name, cls in (("lm_eval", LmEvalProber), ("refusal", RefusalProber)):
        if getattr(p, name) is not None:
            require_lm_eval()
            made.append(cls(getattr(p, name), tokenizer, model_key, p.sub_schedule(name, n)))
    return made
