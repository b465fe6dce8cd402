"""Sweep specs: the sections of :mod:`.config` plus ``[method]`` and ``[grid]``, as runs.

A spec file has one table per section (``[sweep]``, ``[model]``, ``[data]``, ``[train]``,
``[lora]``, ``[probe]``, ``[method]``) and a ``[grid]`` table whose keys are dotted field paths
(``"lora.rank" = [1, 4, 16, 64]``), expanded as a Cartesian product into :class:`RunSpec` s.
``[sweep] seeds = k`` adds the seed axis ``train.seed = [s, ..., s + k - 1]`` (the last axis).
Everything is validated before any run starts.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (SECTIONS as PLAIN_SECTIONS, ConfigError, DataSection, LoraSection, ModelSection, ProbeSection,
                     SweepSection, TrainSection, build_section, field_names, field_value, hashed, section_dict)
from .methods import get_method, method_name, setting_fields
from .precision import resolve_dtype

__all__ = ["SweepSpec", "RunSpec", "MethodSection", "load_spec", "parse_spec", "spec_path", "override", "builtin_specs",
           "ConfigError", "SECTIONS"]


@dataclass
class MethodSection:
    """``[method]``: the fine-tuning method's name and settings (see :mod:`.methods`).

    ``name`` is a method's name or a composition's (``["sam", "replay"]`` is kept as
    ``"sam+replay"``). ``settings`` holds the settings as given, of any registered method, so one
    table can serve a ``"method.name"`` grid; :attr:`config` is the run's own method's typed
    settings, defaults filled.
    """

    name: str = "lora"
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_values(cls, values: Any) -> "MethodSection":
        if not isinstance(values, dict):
            raise ConfigError(f"[method] = {values!r} is not a table; write a [method] table with name = ...")
        values = dict(values)
        name = method_name(values.pop("name", "lora"))
        known = setting_fields()
        for key in sorted(values):
            if key not in known:
                raise ConfigError(f"unknown field method.{key}; fields of [method]: name, {', '.join(known)}")
        checked = {k: field_value(f"method.{k}", *known[k], v) for k, v in values.items()}
        return cls(name, checked)

    @property
    def config(self) -> Any:
        """This run's method settings as its typed dataclass (other methods' settings dropped)."""
        cls = get_method(self.name).Config
        own = {k: v for k, v in self.settings.items() if k in field_names(cls)}
        return cls(**own)

    def own(self) -> "MethodSection":
        """The same method with only its own settings, defaults filled in (what a run records)."""
        return MethodSection(self.name, dataclasses.asdict(self.config))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **copy.deepcopy(self.settings)}


#: Every section of a spec, in file order.
SECTIONS: dict[str, type] = {**PLAIN_SECTIONS, "method": MethodSection}


def _section(name: str, values: Any) -> Any:
    if name == "method":
        return MethodSection.from_values(values)
    return build_section(name, values)


def _section_names(name: str) -> list[str]:
    if name == "method":
        return ["name", *setting_fields()]
    return field_names(SECTIONS[name])


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
        return {name: (s.to_dict() if isinstance(s, MethodSection) else section_dict(s))
                for name, s in ((n, getattr(self, n)) for n in SECTIONS)}

    def check(self) -> None:
        """Checks across sections (a method's against the batch, probe steps against max_steps)."""
        for name, beyond in self.probe.steps_beyond(self.train.max_steps):
            raise ConfigError(f"{name} lists steps {beyond} beyond train.max_steps = {self.train.max_steps}; "
                              f"drop them or raise train.max_steps")
        get_method(self.method.name).check_run(self)

    @property
    def run_id(self) -> str:
        """Stable hash of what determines the results (never paths, device or executor).

        Fields declared with ``run_id=False`` never enter it, ``run_id="if-set"`` ones only
        when changed from their default. Only the run's own method settings enter it, by the same
        rules (a composition's: both methods' settings, under its name ``sam+replay``); plain LoRA
        hashes as it did before methods existed, so older RUNS_DIRs stay valid, and other
        methods prefix the id with their name. What the run *read* (the content of its corpora
        and model) is recorded beside it, in the run's sidecar (see :mod:`.setup`).
        """
        d = {name: hashed(getattr(self, name)) for name in PLAIN_SECTIONS}
        d["method"] = {"name": self.method.name, **hashed(self.method.config)}
        prefix = f"r{self.lora.rank}-"
        if d["method"] == {"name": "lora"}:
            d.pop("method")
        else:
            prefix = f"{self.method.name}-{prefix}"
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return prefix + hashlib.sha1(blob).hexdigest()[:12]


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
        if not isinstance(grid, dict):
            raise ConfigError(f"[grid] = {grid!r} is not a table; write e.g. [grid] \"lora.rank\" = [1, 4]")
        base = RunSpec(**{s: _section(s, raw.get(s, {}) or {}) for s in SECTIONS})
        spec = cls(base=base, grid=grid)
        spec._check_grid()
        return spec

    def _check_grid(self) -> None:
        for key, values in self.grid.items():
            section, _, name = key.partition(".")
            if section not in SECTIONS or name not in _section_names(section):
                valid = [f"{s}.{n}" for s in SECTIONS if s != "sweep" for n in _section_names(s)]
                raise ConfigError(f"grid key {key!r} names no field; valid keys: {', '.join(valid)}")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid.{key!r} = {values!r} must be a non-empty list of values")
        if self.base.sweep.seeds > 1 and "train.seed" in self.grid:
            raise ConfigError(f"sweep.seeds = {self.base.sweep.seeds} and grid 'train.seed' both set the seeds; keep "
                              "one: sweep.seeds = k runs seeds train.seed .. train.seed + k - 1")
        self.expand()  # validates every combination before any run starts

    def axes(self) -> dict[str, list]:
        """The grid's axes in order, with ``[sweep] seeds`` as the last (``train.seed``)."""
        seeds = self.base.sweep.seeds
        if seeds == 1:
            return dict(self.grid)
        return {**self.grid, "train.seed": [self.base.train.seed + i for i in range(seeds)]}

    def expand(self) -> list[RunSpec]:
        """The Cartesian product of the grid applied to the base spec, in grid order.

        Each run keeps only its own method's settings; combinations that differ only in the
        settings of other methods are the same run and are listed once. ``model.dtype = "auto"``
        is resolved to the precision the run computes in (:func:`.precision.resolve_dtype`). A
        resolved run has no axes left: its ``sweep.seeds`` is 1.
        """
        axes = self.axes()
        keys = list(axes)
        runs: dict[str, RunSpec] = {}
        for combo in itertools.product(*(axes[k] for k in keys)):
            d = self.base.to_dict()
            d["sweep"]["seeds"] = 1
            for key, value in zip(keys, combo):
                section, _, name = key.partition(".")
                d[section][name] = value
            run = RunSpec(**{s: _section(s, d[s]) for s in SECTIONS})
            run.method = run.method.own()
            run.model = dataclasses.replace(run.model, dtype=resolve_dtype(run))  # the id names the precision
            run.check()
            runs.setdefault(run.run_id, run)
        return list(runs.values())

    def to_dict(self) -> dict:
        return {**self.base.to_dict(), "grid": copy.deepcopy(self.grid)}


#: Where the built-in specs live (package data): ``demo``, ``reference``, ``mitigation``, ...
BUILTIN_SPECS = Path(__file__).resolve().parents[1] / "specs"


def builtin_specs() -> dict[str, str]:
    """Built-in spec name -> its first comment line (what it is)."""
    out = {}
    for path in sorted(BUILTIN_SPECS.glob("*.toml")):
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        out[path.stem] = first
    return out


def spec_path(name_or_path: str | Path) -> Path:
    """A spec file: a path that exists, or the name of a built-in spec (``demo``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = BUILTIN_SPECS / f"{path.stem if path.suffix == '.toml' else path.name}.toml"
    if path.parent == Path(".") and builtin.is_file():
        return builtin
    raise ConfigError(f"sweep spec {str(name_or_path)!r} does not exist; give a TOML file or a built-in spec: "
                      f"{', '.join(builtin_specs())} (forgetting-laws specs lists them)")


def parse_spec(text: str, where: str) -> dict:
    """The TOML ``text`` of a spec as a dict, or a ConfigError naming ``where``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep spec {where!r} is not valid TOML: {exc}") from exc


def override(raw: dict, assignments: list[str]) -> dict:
    """``raw`` (a spec's TOML dict) with ``section.field=value`` assignments applied (``--set``).

    The value is read as TOML (``3``, ``1e-3``, ``true``, ``[1, 4]``, ``"text"``; a bare word is
    a string), then validated with the rest of the spec. Setting a field that the grid varies
    replaces the grid axis by this one value.
    """
    raw = copy.deepcopy(raw)
    for item in assignments:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set {item!r} is not section.field=value; write e.g. --set train.max_steps=20")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"--set {item!r}: [{section}] is not a table in this spec")
        table[name] = value
        (raw.get("grid") or {}).pop(key.strip(), None)
    return raw


def load_spec(path: str | Path, overrides: list[str] = ()) -> SweepSpec:
    """Read and validate a TOML sweep spec (a file or a built-in name), with ``--set`` overrides."""
    path = spec_path(path)
    raw = parse_spec(path.read_text(encoding="utf-8"), str(path))
    return SweepSpec.from_dict(override(raw, list(overrides)))

