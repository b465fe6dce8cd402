"""Typed spec sections: dataclasses whose fields carry a default, a help string and a check.

Every section of a sweep spec (``[sweep]``, ``[model]``, ``[data]``, ``[train]``, ``[lora]``,
``[probe]`` and its sub-tables) and every method's own settings (:mod:`.methods`) is a dataclass
built here by :func:`build_section`, so one piece of code checks types, choices and ranges and
words every error the same way: the field, the bad value and the fix. The spec that combines the
sections into runs is :mod:`.spec`.

Example
-------
>>> build_section("lora", {"rank": 4}).rank
4
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from ..errors import ConfigError

__all__ = ["option", "build_section", "field_value", "field_names", "hashed", "section_dict", "ConfigError",
           "SweepSection", "ModelSection", "DataSection", "TrainSection", "LoraSection", "ProbeSection",
           "LmEvalProbe", "RefusalProbe", "SECTIONS", "positive", "non_negative", "unit_interval"]

Check = Callable[[Any], "str | None"]


def option(default: Any, help: str, run_id: bool | str = True, check: Check | None = None, **kw: Any) -> Any:
    """A dataclass field with a default, a help string (shown by ``--help`` and errors) and a check.

    ``check(value)`` returns ``None`` for a valid value, else the reason ("must be > 0").
    ``run_id`` says whether the field enters the run id: ``True`` (it changes the results),
    ``False`` (how a run executes, never what it computes: device, batch size of the probes,
    compilation, resources) or ``"if-set"`` (a field added after runs were recorded: it enters
    only when it differs from its default, so older RUNS_DIRs keep their ids). Other keywords
    (``column``: the parquet column of a method setting; ``table``: a sub-table's dataclass) are
    kept in the field's metadata.
    """
    meta = {"help": help, "run_id": run_id, "check": check, **kw}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- checks


def positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def unit_interval(v: float) -> str | None:
    return None if 0 <= v <= 1 else "must be in [0, 1]"


def _dropout(v: float) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _steps(word: str) -> Check:
    def check(steps: Any) -> str | None:
        if isinstance(steps, str):
            return None if steps == word else f"use {word!r} or a list of steps such as [0, 1, 2, 4, 8]"
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps):
            return "steps must be integers >= 0"
        return None
    return check


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _sweep_name(v: str) -> str | None:
    if _SAFE_NAME.fullmatch(v) and ".." not in v:
        return None
    return ("must be a plain folder name (letters, digits, '.', '_', '-'; no '/', '..' or absolute path): "
            "it names runs/<name>; write results elsewhere with --out")


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _device(v: str) -> str | None:
    return None if _DEVICE.fullmatch(v) else "use auto, cpu, cuda, cuda:N or mps"


def _targets(v: Any) -> str | None:
    if v == "all-linear" or (isinstance(v, list) and v and all(isinstance(m, str) and m for m in v)):
        return None
    return "use 'all-linear' or a non-empty list of module names such as ['q_proj', 'v_proj']"


#: The experiment trackers transformers' Trainer reports to (its ``report_to`` names).
TRACKERS = ("azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte", "kubeflow", "mlflow",
            "neptune", "swanlab", "tensorboard", "trackio", "wandb")


def _trackers(v: list) -> str | None:
    bad = [t for t in v if t not in TRACKERS]
    return f"unknown tracker(s) {bad}; use any of {', '.join(TRACKERS)}" if bad else None


# --------------------------------------------------------------------------- sections


@dataclass
class SweepSection:
    name: str = option("sweep", "name of the sweep, stored in every row (and runs/<name> without --out)",
                       check=_sweep_name)
    num_cpus: float = option(1.0, "CPUs each run reserves (ray executor; torch threads per run)", run_id=False,
                             check=positive)
    num_gpus: float = option(0.0, "GPUs each run reserves (ray executor); fractions share a GPU", run_id=False,
                             check=non_negative)
    max_retries: int = option(1, "times a failed run is retried before it is marked failed (ray executor)",
                              run_id=False, check=non_negative)
    seeds: int = option(1, "seeds per grid point: adds the axis train.seed = [s, s + 1, ..., s + seeds - 1] from "
                        "the spec's train.seed s (comparisons need 3 or more); each run records its own seed",
                        run_id=False, check=positive)


@dataclass
class ModelSection:
    name: str = option("smollm2-135m", "model alias, hub id, local directory or .gguf path")
    dtype: Literal["auto", "float32", "bfloat16"] = option(
        "auto", "parameter dtype: auto = bfloat16 on CUDA, float32 on CPU")
    device: str = option("auto", "auto (cuda when present), cpu, cuda, cuda:N", run_id=False, check=_device)
    attention: Literal["sdpa", "eager", "flash_attention_2"] = option(
        "sdpa", "attention kernel of hub / local models: sdpa (PyTorch fused), eager, "
        "flash_attention_2 (needs flash-attn)", run_id=False)


@dataclass
class DataSection:
    dataset: str = option("lee-news", "fine-tuning corpus")
    reference: str = option("python-docs", "forgetting-probe (reference) corpus")
    seq_len: int = option(128, "tokens per block", check=positive)
    heldout_blocks: int = option(16, "blocks of the fine-tuning corpus kept out for ft_loss", check=positive)
    reference_blocks: int = option(16, "blocks of the reference corpus for the probes", check=positive)
    split_seed: int = option(1234, "seed of the held-out / reference block selection", check=non_negative)


@dataclass
class TrainSection:
    max_steps: int = option(60, "update steps N", check=positive)
    batch_size: int = option(4, "blocks per micro-batch on each device", check=positive)
    grad_accum: int = option(1, "micro-batches per update step, summed over all devices: an update sees "
                                "batch_size x grad_accum blocks on any number of GPUs", check=positive)
    lr: float = option(1e-3, "learning rate", check=positive)
    lr_scheduler: Literal["constant", "linear", "cosine"] = option("constant", "learning-rate schedule")
    warmup_steps: int = option(0, "linear warm-up steps", check=non_negative)
    optimizer: Literal["adamw", "adafactor", "sgd"] = option("adamw", "optimiser")
    weight_decay: float = option(0.0, "weight decay", check=non_negative)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 disables)", check=non_negative)
    seed: int = option(0, "seed of the adapter initialisation and the data order", check=non_negative)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass: less memory "
                                          "for one more forward pass", run_id=False)
    compile: bool | Literal["auto"] = option(
        "auto", "torch.compile the training step: true, false, or 'auto' (on CUDA; off on a CPU, where a "
        "LoRA step is matmul-bound and compiling buys little)", run_id=False)
    report_to: list[str] = option([], "experiment trackers the Trainer reports the training loss and every probe to: "
                                      "tensorboard (logs in RUNS_DIR/_logs/<run_id>), wandb, mlflow, ... (any "
                                      "transformers integration that is installed)", run_id=False, check=_trackers)
    save_adapter: bool = option(False, "keep the final adapter in RUNS_DIR/_adapters/<run_id>/ (for landscape "
                                "analyses such as sharpness)", run_id=False)


@dataclass
class LoraSection:
    rank: int = option(8, "LoRA rank r", check=positive)
    alpha: float = option(1.0, "LoRA alpha; with rslora the scale is alpha / sqrt(rank)", check=positive)
    rslora: bool = option(True, "rank-stabilised scaling alpha / sqrt(r) (the paper's setting)")
    target_modules: str | list[str] = option("all-linear", "'all-linear' or a list of module names",
                                             check=_targets)
    dropout: float = option(0.0, "LoRA dropout", check=_dropout)


def _sub_steps(steps: str | list[int], schedule: list[int], max_steps: int) -> list[int]:
    """The steps of a sub-probe: the main schedule ('all') or its own list, with 0 and max_steps."""
    if steps == "all":
        return list(schedule)
    return sorted({0, max_steps, *(s for s in steps if s <= max_steps)})


def _task_names(tasks: list) -> str | None:
    if tasks and all(isinstance(t, str) and t for t in tasks):
        return None
    return ("give a non-empty list of task names, e.g. ['fl_arc_mini'] (list them with "
            "`forgetting-laws tasks`)")


@dataclass
class LmEvalProbe:
    """``[probe.lm_eval]``: lm-evaluation-harness tasks evaluated on the model in memory.

    Multiple-choice tasks also record ``agree``: the fraction of questions where the model picks
    the base model's answer (see :mod:`forgetting_laws.measure.evals`).
    """

    tasks: list[str] = option([], "lm-evaluation-harness task names, e.g. ['fl_arc_mini'] or "
                                  "['arc_challenge'] (list them with `forgetting-laws tasks`)", check=_task_names)
    limit: int = option(0, "questions per task (0 = all)", check=non_negative)
    num_fewshot: int = option(0, "in-context examples per question", check=non_negative)
    steps: str | list[int] = option("all", "'all' (every probe step) or a list of steps; 0 and max_steps always",
                                    check=_steps("all"))
    include_path: str = option("", "extra folder of lm-evaluation-harness task YAMLs (a YAML that runs "
                                   "code needs --trust-task-code)", run_id=False)
    batch_size: int = option(8, "requests per forward pass", run_id=False, check=positive)

    def schedule(self, probe_schedule: list[int], max_steps: int) -> list[int]:
        return _sub_steps(self.steps, probe_schedule, max_steps)


@dataclass
class RefusalProbe:
    """``[probe.refusal]``: greedy answers to harmful requests, classified as refusal or not.

    Records ``refusal_rate`` and ``refusal_lost`` (prompts the base model refused that the
    model no longer refuses); the rule is :func:`forgetting_laws.measure.evals.refusal.is_refusal`.
    """

    prompts: str = option("builtin", "'builtin' (shipped prompts), 'advbench' (needs network) or a .txt/.jsonl "
                                     "file", check=lambda v: None if v else "use 'builtin', 'advbench' or a path "
                                                                           "to a prompts file")
    limit: int = option(0, "prompts used (0 = all)", check=non_negative)
    max_new_tokens: int = option(48, "tokens generated per answer (greedy)", check=positive)
    chat_template: bool = option(True, "wrap prompts in the tokenizer's chat template when it has one")
    steps: str | list[int] = option("all", "'all' (every probe step) or a list of steps; 0 and max_steps always",
                                    check=_steps("all"))
    batch_size: int = option(8, "prompts per generation batch", run_id=False, check=positive)

    def schedule(self, probe_schedule: list[int], max_steps: int) -> list[int]:
        return _sub_steps(self.steps, probe_schedule, max_steps)


@dataclass
class ProbeSection:
    steps: str | list[int] = option("log", "'log' (0, 1, 2, 4, ... then every `every`) or a list of steps",
                                    check=_steps("log"))
    every: int = option(10, "with steps = 'log': spacing of the probes after the log-spaced ones", check=positive)
    forget_kl: bool = option(False, "also measure KL(p_base || p_ft) (one extra forward per probe)")
    precision: Literal["float32", "run"] = option(
        "float32", "what the probes compute in: float32 (a bfloat16 run's frozen weights are upcast for the "
        "probe, exactly), or the run's own precision (bfloat16 autocast, log-softmax in float32)",
        run_id="if-set")
    batch_size: int = option(8, "blocks per probe forward pass", run_id=False, check=positive)
    lm_eval: LmEvalProbe | None = option(None, "[probe.lm_eval]: lm-evaluation-harness tasks (off when absent)",
                                         run_id="if-set", table=LmEvalProbe)
    refusal: RefusalProbe | None = option(None, "[probe.refusal]: refusal forgetting (off when absent)",
                                          run_id="if-set", table=RefusalProbe)

    def _main_schedule(self, max_steps: int) -> list[int]:
        if self.steps == "log":
            steps = {0, max_steps}
            k = 1
            while k < min(self.every, max_steps):
                steps.add(k)
                k *= 2
            steps.update(range(self.every, max_steps, self.every))
        else:
            steps = {0, max_steps, *(s for s in self.steps if s <= max_steps)}
        return sorted(steps)

    def schedule(self, max_steps: int) -> list[int]:
        """The probed steps: always 0 and max_steps, within [0, max_steps], with the sub-probes' steps."""
        main = self._main_schedule(max_steps)
        steps = set(main)
        for sub in (self.lm_eval, self.refusal):
            if sub is not None:
                steps.update(sub.schedule(main, max_steps))
        return sorted(steps)

    def sub_schedule(self, name: str, max_steps: int) -> list[int]:
        """The steps at which sub-probe ``name`` ('lm_eval' or 'refusal') runs; [] when it is off."""
        sub = getattr(self, name)
        return [] if sub is None else sub.schedule(self._main_schedule(max_steps), max_steps)

    def steps_beyond(self, max_steps: int) -> list[tuple[str, list[int]]]:
        """(field, steps) of every explicit step list that names steps past ``max_steps``."""
        lists = [("probe.steps", self.steps)]
        lists += [(f"probe.{n}.steps", getattr(self, n).steps) for n in ("lm_eval", "refusal") if getattr(self, n)]
        return [(name, [s for s in steps if s > max_steps]) for name, steps in lists
                if isinstance(steps, list) and any(s > max_steps for s in steps)]


#: The plain sections of a spec, in file order (``[method]`` is added by :mod:`.spec`).
SECTIONS: dict[str, type] = {
    "sweep": SweepSection, "model": ModelSection, "data": DataSection,
    "train": TrainSection, "lora": LoraSection, "probe": ProbeSection,
}


# --------------------------------------------------------------------------- building


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _check_type(where: str, hint: Any, value: Any) -> Any:
    """``value`` coerced to ``hint`` (an int is accepted for a float), or a ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}; allowed values: {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option_ in args:  # e.g. bool | Literal["auto"]: the first kind that accepts the value
            try:
                return _check_type(where, option_, value)
            except ConfigError:
                continue
        kinds = " or ".join(_kind_name(a) for a in args)
        raise ConfigError(f"{where} has type {type(value).__name__}, expected {kinds}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    base = origin or hint
    if base in (int, float, bool, str, list, dict) and (
            not isinstance(value, base) or (base is int and isinstance(value, bool))):
        raise ConfigError(f"{where} has type {type(value).__name__}, expected {_kind_name(hint)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} is not a finite number; give a finite value")
    return value


def _kind_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    return getattr(typing.get_origin(hint) or hint, "__name__", str(hint))


def field_value(where: str, f: dataclasses.Field, hint: Any, value: Any) -> Any:
    """A field's value: a sub-table is built into its dataclass, anything else type-checked and checked."""
    table = f.metadata.get("table")
    if table is not None:
        if value is None or isinstance(value, table):
            return copy.deepcopy(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} = {value!r}; write it as a table: [{where}]")
        return build_section(where, value, table)
    value = _check_type(f"{where} = {value!r}", hint, value)
    reason = f.metadata.get("check") and f.metadata["check"](value)
    if reason:
        raise ConfigError(f"{where} = {value!r}, {reason} ({f.metadata['help']})")
    return value


def build_section(section: str, values: Any, cls: type | None = None) -> Any:
    """A section (or a sub-table such as ``probe.lm_eval``, or a method's settings) from its values.

    Every given value is type-checked and checked; defaults are trusted. Raises
    :class:`ConfigError` naming ``section.field``, the value and the fix.
    """
    cls = cls or SECTIONS[section]
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] = {values!r} is not a table; write it as a [{section}] table "
                          f"with fields {', '.join(field_names(cls))}")
    names = field_names(cls)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown field {section}.{unknown[0]}; fields of [{section}]: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return cls(**{k: field_value(f"{section}.{k}", fields[k], hints[k], v) for k, v in values.items()})


def hashed(section: Any) -> dict:
    """The section's fields that determine results, as the run id hashes them.

    A sub-table (a nested dataclass such as ``probe.lm_eval``) is hashed by the same rules.
    """
    out = {}
    for f in dataclasses.fields(section):
        value, rule = getattr(section, f.name), f.metadata.get("run_id", True)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if rule is True or (rule == "if-set" and value != default):
            out[f.name] = hashed(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def section_dict(section: Any) -> dict:
    """The section as a TOML-ready dict; an absent sub-table (None) is left out, as TOML has no null."""
    return {k: v for k, v in dataclasses.asdict(section).items() if v is not None}
