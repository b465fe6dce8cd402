"""Typed sweep specs: dataclasses with defaults and help, TOML load, validation, grid expansion.

A spec file has one table per section (``[sweep]``, ``[model]``, ``[data]``, ``[train]``,
``[lora]``, ``[probe]``, ``[method]``) and a ``[grid]`` table whose keys are dotted field paths
(``"lora.rank" = [1, 4, 16, 64]``), expanded as a Cartesian product into :class:`RunSpec` s.

Example
-------
>>> spec = SweepSpec.from_dict({"sweep": {"name": "s"}, "grid": {"lora.rank": [1, 8]}})
>>> [r.lora.rank for r in spec.expand()]
[1, 8]
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError

__all__ = ["SweepSpec", "RunSpec", "load_spec", "ConfigError", "LmEvalProbe", "RefusalProbe"]


def _f(default: Any, help: str, run_id: bool | str = True, **kw: Any) -> Any:
    """A dataclass field with a default and a help string (shown by ``--help`` and errors).

    ``run_id`` says whether the field enters :attr:`RunSpec.run_id`: ``True`` (it changes the
    results), ``False`` (how a run executes, never what it computes: device, batch size of the
    probes, compilation, resources) or ``"if-set"`` (a field added after runs were recorded:
    it enters only when it differs from its default, so older RUNS_DIRs keep their ids).
    """
    meta = {"help": help, "run_id": run_id, **kw}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _hashed(section: Any) -> dict:
    """The section's fields that determine results, as :attr:`RunSpec.run_id` hashes them.

    A sub-table (a nested dataclass such as ``probe.lm_eval``) is hashed by the same rules.
    """
    out = {}
    for f in dataclasses.fields(section):
        value, rule = getattr(section, f.name), f.metadata.get("run_id", True)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if rule is True or (rule == "if-set" and value != default):
            out[f.name] = _hashed(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def _positive(section: str, name: str, value: Any) -> None:
    if value <= 0:
        raise ConfigError(f"{section}.{name} = {value!r}, must be > 0")


@dataclass
class SweepSection:
    name: str = _f("sweep", "name of the sweep, stored in every row")
    num_cpus: float = _f(1.0, "CPUs each run reserves (ray executor; torch threads per run)", run_id=False)
    num_gpus: float = _f(0.0, "GPUs each run reserves (ray executor); fractions share a GPU", run_id=False)
    max_retries: int = _f(1, "times a failed run is retried before it is marked failed (ray executor)",
                          run_id=False)

    def validate(self) -> None:
        _positive("sweep", "num_cpus", self.num_cpus)
        for name in ("num_gpus", "max_retries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"sweep.{name} = {getattr(self, name)!r}, must be >= 0")


@dataclass
class ModelSection:
    name: str = _f("smollm2-135m", "model alias, hub id, local directory or .gguf path")
    dtype: Literal["auto", "float32", "bfloat16"] = _f(
        "auto", "parameter dtype: auto = bfloat16 on CUDA, float32 on CPU")
    device: str = _f("auto", "auto (cuda when present), cpu, cuda, cuda:N", run_id=False)
    attention: Literal["sdpa", "eager", "flash_attention_2"] = _f(
        "sdpa", "attention kernel of hub / local models: sdpa (PyTorch fused), eager, "
        "flash_attention_2 (needs flash-attn)", run_id=False)


@dataclass
class DataSection:
    dataset: str = _f("lee-news", "fine-tuning corpus")
    reference: str = _f("python-docs", "forgetting-probe (reference) corpus")
    seq_len: int = _f(128, "tokens per block")
    heldout_blocks: int = _f(16, "blocks of the fine-tuning corpus kept out for ft_loss")
    reference_blocks: int = _f(16, "blocks of the reference corpus for the probes")
    split_seed: int = _f(1234, "seed of the held-out / reference block selection")

    def validate(self) -> None:
        for name in ("seq_len", "heldout_blocks", "reference_blocks"):
            _positive("data", name, getattr(self, name))


@dataclass
class TrainSection:
    max_steps: int = _f(60, "update steps N")
    batch_size: int = _f(4, "blocks per micro-batch on each device")
    grad_accum: int = _f(1, "micro-batches per update step, summed over all devices: an update "
                            "sees batch_size x grad_accum blocks on any number of GPUs")
    lr: float = _f(1e-3, "learning rate")
    lr_scheduler: Literal["constant", "linear", "cosine"] = _f("constant", "learning-rate schedule")
    warmup_steps: int = _f(0, "linear warm-up steps")
    optimizer: Literal["adamw", "adafactor", "sgd"] = _f("adamw", "optimiser")
    weight_decay: float = _f(0.0, "weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 disables)")
    seed: int = _f(0, "seed of the adapter initialisation and the data order")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass: less "
                                      "memory for one more forward pass", run_id=False)
    compile: bool | str = _f(
        "auto", "torch.compile the training step: true, false, or 'auto' (when the sweep's steps "
        "repay the compilation; see forgetting_laws.measure.compiling)", run_id=False)
    save_adapter: bool = _f(False, "keep the final adapter in RUNS_DIR/adapters/<run_id>/ (for landscape "
                            "analyses such as sharpness)", run_id=False)

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "lr"):
            _positive("train", name, getattr(self, name))
        if not (isinstance(self.compile, bool) or self.compile == "auto"):
            raise ConfigError(f"train.compile = {self.compile!r}; use true, false or \"auto\"")


@dataclass
class LoraSection:
    rank: int = _f(8, "LoRA rank r")
    alpha: float = _f(1.0, "LoRA alpha; with rslora the scale is alpha / sqrt(rank)")
    rslora: bool = _f(True, "rank-stabilised scaling alpha / sqrt(r) (the paper's setting)")
    target_modules: str | list[str] = _f("all-linear", "'all-linear' or a list of module names")
    dropout: float = _f(0.0, "LoRA dropout")

    def validate(self) -> None:
        _positive("lora", "rank", self.rank)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout = {self.dropout!r}, must be in [0, 1)")


def _check_steps(where: str, steps: Any, word: str) -> None:
    if isinstance(steps, str) and steps != word:
        raise ConfigError(f"{where}.steps = {steps!r}; use {word!r} or a list of steps such as [0, 1, 2, 4, 8]")
    if isinstance(steps, list) and any((not isinstance(s, int)) or isinstance(s, bool) or s < 0 for s in steps):
        raise ConfigError(f"{where}.steps = {steps!r}: steps must be integers >= 0")


def _sub_steps(steps: str | list[int], schedule: list[int], max_steps: int) -> list[int]:
    """The steps of a sub-probe: the main schedule ('all') or its own list, with 0 and max_steps."""
    if steps == "all":
        return list(schedule)
    return sorted({0, max_steps, *(s for s in steps if s <= max_steps)})


@dataclass
class LmEvalProbe:
    """``[probe.lm_eval]``: lm-evaluation-harness tasks evaluated on the model in memory.

    Multiple-choice tasks also record ``agree``: the fraction of questions where the model picks
    the base model's answer (see :mod:`forgetting_laws.measure.evals`).
    """

    tasks: list[str] = _f([], "lm-evaluation-harness task names, e.g. ['fl_arc_mini'] or ['arc_challenge'] "
                              "(list them with `forgetting-laws tasks`)")
    limit: int = _f(0, "questions per task (0 = all)")
    num_fewshot: int = _f(0, "in-context examples per question")
    steps: str | list[int] = _f("all", "'all' (every probe step) or a list of steps; 0 and max_steps always")
    include_path: str = _f("", "extra folder of lm-evaluation-harness task YAMLs", run_id=False)
    batch_size: int = _f(8, "requests per forward pass", run_id=False)

    def validate(self) -> None:
        if not self.tasks or not all(isinstance(t, str) and t for t in self.tasks):
            raise ConfigError(f"probe.lm_eval.tasks = {self.tasks!r}; give a non-empty list of task names, "
                              "e.g. ['fl_arc_mini'] (list them with `forgetting-laws tasks`)")
        if self.limit < 0 or self.num_fewshot < 0:
            raise ConfigError(f"probe.lm_eval.limit = {self.limit!r}, num_fewshot = {self.num_fewshot!r}: "
                              "must be >= 0 (limit 0 = all questions)")
        _positive("probe.lm_eval", "batch_size", self.batch_size)
        _check_steps("probe.lm_eval", self.steps, "all")

    def schedule(self, probe_schedule: list[int], max_steps: int) -> list[int]:
        return _sub_steps(self.steps, probe_schedule, max_steps)


@dataclass
class RefusalProbe:
    """``[probe.refusal]``: greedy answers to harmful requests, classified as refusal or not.

    Records ``refusal_rate`` and ``refusal_lost`` (prompts the base model refused that the
    model no longer refuses); the rule is :func:`forgetting_laws.measure.evals.refusal.is_refusal`.
    """

    prompts: str = _f("builtin", "'builtin' (shipped prompts), 'advbench' (needs network) or a .txt/.jsonl file")
    limit: int = _f(0, "prompts used (0 = all)")
    max_new_tokens: int = _f(48, "tokens generated per answer (greedy)")
    chat_template: bool = _f(True, "wrap prompts in the tokenizer's chat template when it has one")
    steps: str | list[int] = _f("all", "'all' (every probe step) or a list of steps; 0 and max_steps always")
    batch_size: int = _f(8, "prompts per generation batch", run_id=False)

    def validate(self) -> None:
        if not self.prompts:
            raise ConfigError("probe.refusal.prompts = ''; use 'builtin', 'advbench' or a path to a prompts file")
        if self.limit < 0:
            raise ConfigError(f"probe.refusal.limit = {self.limit!r}, must be >= 0 (0 = all prompts)")
        _positive("probe.refusal", "max_new_tokens", self.max_new_tokens)
        _positive("probe.refusal", "batch_size", self.batch_size)
        _check_steps("probe.refusal", self.steps, "all")

    def schedule(self, probe_schedule: list[int], max_steps: int) -> list[int]:
        return _sub_steps(self.steps, probe_schedule, max_steps)


@dataclass
class ProbeSection:
    steps: str | list[int] = _f("log", "'log' (0, 1, 2, 4, ... then every `every`) or a list of steps")
    every: int = _f(10, "with steps = 'log': spacing of the probes after the log-spaced ones")
    forget_kl: bool = _f(False, "also measure KL(p_base || p_ft) (one extra forward per probe)")
    batch_size: int = _f(8, "blocks per probe forward pass", run_id=False)
    lm_eval: LmEvalProbe | None = _f(None, "[probe.lm_eval]: lm-evaluation-harness tasks (off when absent)",
                                     run_id="if-set", table=LmEvalProbe)
    refusal: RefusalProbe | None = _f(None, "[probe.refusal]: refusal forgetting (off when absent)",
                                      run_id="if-set", table=RefusalProbe)

    def validate(self) -> None:
        _positive("probe", "every", self.every)
        _positive("probe", "batch_size", self.batch_size)
        _check_steps("probe", self.steps, "log")

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


@dataclass
class MethodSection:
    """``[method]``: the fine-tuning method's name and knobs (see :mod:`forgetting_laws.measure.methods`).

    ``knobs`` holds the knobs as given, of any registered method, so one table can serve a
    ``"method.name"`` grid; :meth:`resolved` gives the run's own knobs with defaults filled in.
    """

    name: str = _f("lora", "fine-tuning method: lora, sam, ilora, replay (see forgetting_laws.measure.methods)")
    knobs: dict[str, Any] = _f({}, "the method knobs given in [method], any registered method's")

    @classmethod
    def from_values(cls, values: dict) -> "MethodSection":
        from .methods import all_knobs, get_method

        values = dict(values)
        name = values.pop("name", "lora")
        get_method(name)
        known = all_knobs()
        for key in sorted(values):
            if key not in known:
                raise ConfigError(f"unknown field method.{key}; fields of [method]: name, {', '.join(known)}")
        return cls(name, {k: known[k].coerce(v) for k, v in values.items()})

    def resolved(self) -> dict[str, Any]:
        """This method's own knobs: given values, else their defaults (other methods' are dropped)."""
        from .methods import get_method

        return {k.name: self.knobs.get(k.name, k.default) for k in get_method(self.name).knobs}

    def own(self) -> "MethodSection":
        """The same method with only its own knobs, defaults filled in (what a run records)."""
        return MethodSection(self.name, self.resolved())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **copy.deepcopy(self.knobs)}


SECTIONS: dict[str, type] = {
    "sweep": SweepSection, "model": ModelSection, "data": DataSection,
    "train": TrainSection, "lora": LoraSection, "probe": ProbeSection, "method": MethodSection,
}


def _field_names(cls: type) -> list[str]:
    if cls is MethodSection:
        from .methods import all_knobs

        return ["name", *all_knobs()]
    return [f.name for f in dataclasses.fields(cls)]


def _check_type(section: str, f: dataclasses.Field, value: Any, hints: dict) -> Any:
    """Coerce ints to floats where a float is expected; reject values of the wrong kind."""
    hint = hints[f.name]
    origin = typing.get_origin(hint)
    where = f"{section}.{f.name} = {value!r}"
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where}; allowed values: {', '.join(map(repr, typing.get_args(hint)))}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    simple = {int: int, float: float, bool: bool, str: str}
    if hint in simple and (not isinstance(value, simple[hint]) or (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where} has type {type(value).__name__}, expected {hint.__name__}")
    return value


def _build_section(section: str, values: dict, cls: type | None = None) -> Any:
    """A section (or a sub-table such as ``probe.lm_eval``) from its TOML values, validated."""
    cls = cls or SECTIONS[section]
    if cls is MethodSection:
        return MethodSection.from_values(values)
    names = _field_names(cls)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown field {section}.{unknown[0]}; fields of [{section}]: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    obj = cls(**{k: _field_value(section, fields[k], v, hints) for k, v in values.items()})
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _field_value(section: str, f: dataclasses.Field, value: Any, hints: dict) -> Any:
    """A field's value: a sub-table is built into its dataclass, anything else type-checked."""
    table = f.metadata.get("table")
    if table is None:
        return _check_type(section, f, value, hints)
    if value is None or isinstance(value, table):
        return copy.deepcopy(value)
    if not isinstance(value, dict):
        raise ConfigError(f"{section}.{f.name} = {value!r}; write it as a table: [{section}.{f.name}]")
    return _build_section(f"{section}.{f.name}", value, table)


@dataclass
class RunSpec:
    """One fully resolved run: every section's values, no grid."""

    sweep: SweepSection
    model: ModelSection
    data: DataSection
    train: TrainSection
    lora: LoraSection
    probe: ProbeSection
    method: MethodSection = field(default_factory=MethodSection)

    def to_dict(self) -> dict:
        return {name: _section_dict(getattr(self, name)) for name in SECTIONS}

    @property
    def run_id(self) -> str:
        """Stable hash of what determines the results (never paths, device or executor).

        Fields declared with ``run_id=False`` never enter it, ``run_id="if-set"`` ones only
        when changed from their default. Only the run's own method knobs enter it; plain LoRA
        hashes as it did before methods existed, so older RUNS_DIRs stay valid, and other
        methods prefix the id with their name.
        """
        d = {name: _hashed(getattr(self, name)) for name in SECTIONS if name != "method"}
        d["method"] = self.method.own().to_dict()
        prefix = f"r{self.lora.rank}-"
        if d["method"] == {"name": "lora"}:
            d.pop("method")
        else:
            prefix = f"{self.method.name}-{prefix}"
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return prefix + hashlib.sha1(blob).hexdigest()[:12]


def _section_dict(section: Any) -> dict:
    if isinstance(section, MethodSection):
        return section.to_dict()
    # an absent sub-table (None) is left out, as TOML has no null
    return {k: v for k, v in dataclasses.asdict(section).items() if v is not None}


@dataclass
class SweepSpec:
    """A base :class:`RunSpec` plus a grid of dotted field paths to vary."""

    base: RunSpec
    grid: dict[str, list] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict) -> "SweepSpec":
        raw = copy.deepcopy(raw)
        grid = raw.pop("grid", {}) or {}
        unknown = sorted(set(raw) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown section [{unknown[0]}]; sections: {', '.join([*SECTIONS, 'grid'])}")
        base = RunSpec(**{s: _build_section(s, raw.get(s, {}) or {}) for s in SECTIONS})
        spec = cls(base=base, grid=grid)
        spec._check_grid()
        return spec

    def _check_grid(self) -> None:
        for key, values in self.grid.items():
            section, _, name = key.partition(".")
            if section not in SECTIONS or name not in _field_names(SECTIONS[section]):
                valid = [f"{s}.{n}" for s, c in SECTIONS.items() if s != "sweep" for n in _field_names(c)]
                raise ConfigError(f"grid key {key!r} names no field; valid keys: {', '.join(valid)}")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid.{key!r} = {values!r} must be a non-empty list of values")
        self.expand()  # validates every combination before any run starts

    def expand(self) -> list[RunSpec]:
        """The Cartesian product of the grid applied to the base spec, in grid order.

        Each run keeps only its own method's knobs; combinations that differ only in the knobs
        of other methods are the same run and are listed once.
        """
        from .methods import get_method

        keys = list(self.grid)
        runs: dict[str, RunSpec] = {}
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            d = self.base.to_dict()
            for key, value in zip(keys, combo):
                section, _, name = key.partition(".")
                d[section][name] = value
            run = RunSpec(**{s: _build_section(s, d[s]) for s in SECTIONS})
            run.method = run.method.own()
            get_method(run.method.name).check_run(run)
            runs.setdefault(run.run_id, run)
        return list(runs.values())

    def to_dict(self) -> dict:
        return {**self.base.to_dict(), "grid": copy.deepcopy(self.grid)}


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a TOML sweep spec."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep spec {str(path)!r} is not valid TOML: {exc}") from exc
    return SweepSpec.from_dict(raw)
