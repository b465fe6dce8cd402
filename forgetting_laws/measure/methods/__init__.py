"""Fine-tuning methods, one file each, in a registry: ``lora``, ``sam``, ``replay``, ``distill``, ``ilora``.

A spec chooses one with ``[method] name = "..."`` (default ``lora``) and sets its settings in
the same table; ``"method.name"`` can be a ``[grid]`` axis. One ``[method]`` table may carry the
settings of several methods: each run keeps only its own. A method's settings are a dataclass
(its ``Config``) checked by the same code as every spec section. Adding a method is one new file
here plus its import line below.

Methods compose where the papers say so: an update rule (``sam``) on top of an objective
(``replay``, ``distill``, ``ilora``), written ``name = ["sam", "replay"]``. The composition's
name is ``"sam+replay"`` (its run ids, rows and ``method`` column), its settings are both
methods' settings, and either order or the joined name means the same method. Two objectives
(each defines the data and the loss) do not compose, and are refused.

Example
-------
>>> method_names()
['distill', 'ilora', 'lora', 'replay', 'sam']
>>> list(setting_fields("sam"))
['rho', 'adaptive', 'eta']
>>> method_name(["replay", "sam"])
'sam+replay'
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from ...errors import ConfigError
from ...registry import Registry
from .base import Method

__all__ = ["Method", "register_method", "get_method", "method_names", "method_name", "setting_fields", "setting_columns",
           "make_method"]


def _same_method(old: type[Method], new: type[Method]) -> bool:
    return (old.__module__, old.__qualname__) == (new.__module__, new.__qualname__)


METHODS: Registry[type[Method]] = Registry("method", same=_same_method)


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a :class:`Method` under ``cls.name`` (once).

    A setting shared by two methods (``replay_ratio``) must mean the same thing in both: same
    type, default and column.
    """
    shared = setting_fields()
    for f in dataclasses.fields(cls.Config):
        if f.name in shared and _signature(shared[f.name][0]) != _signature(f):
            raise ValueError(f"method {cls.name!r}: setting {f.name!r} differs from the registered one")
    return METHODS.register(cls.name, cls)


def _signature(f: dataclasses.Field) -> tuple:
    return f.type, f.default, f.metadata.get("column")


def method_names() -> list[str]:
    """Registered method names, sorted (compositions such as ``sam+replay`` are not listed)."""
    return METHODS.names()


def method_name(value: Any, field: str = "method.name") -> str:
    """The canonical name of a method or a composition; a :class:`ConfigError` if it is none.

    ``"sam"`` -> ``"sam"``; ``["sam", "replay"]``, ``["replay", "sam"]`` and ``"sam+replay"`` ->
    ``"sam+replay"`` (the update rule first).
    """
    parts = value.split("+") if isinstance(value, str) else value
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise ConfigError(f"{field} = {value!r}; give a method name such as 'replay', or an update rule and an "
                          f"objective as a list such as ['sam', 'replay']")
    classes = [METHODS.get(p, field) for p in parts]
    if len(parts) == 1:
        return parts[0]
    if len(set(parts)) != len(parts):
        raise ConfigError(f"{field} = {value!r} names a method twice; give each once, e.g. ['sam', 'replay']")
    updates = [c.name for c in classes if c.role == "update"]
    objectives = [c.name for c in classes if c.role == "objective"]
    if len(updates) != 1 or len(objectives) != 1:
        raise ConfigError(
            f"{field} = {value!r} does not compose: a composition is one update rule ({_of_role('update')}) on "
            f"one objective ({_of_role('objective')}); objectives each define the data and the loss, so two of "
            f"them do not compose. Use e.g. ['sam', 'replay']")
    if objectives == ["lora"]:
        raise ConfigError(f"{field} = {value!r} is {updates[0]} on plain LoRA: write {field} = {updates[0]!r}")
    return f"{updates[0]}+{objectives[0]}"


def _of_role(role: str) -> str:
    return ", ".join(n for n in METHODS.names() if METHODS[n].role == role)


def get_method(name: str, field: str = "method.name") -> type[Method]:
    """The method class registered as ``name``, or the composition ``"<update>+<objective>"``;
    a clear error otherwise."""
    if "+" not in name:
        return METHODS.get(name, field)
    update, _, objective = method_name(name, field).partition("+")
    return _composed(update, objective)


@functools.cache
def _composed(update: str, objective: str) -> type[Method]:
    """The class of ``update`` (an update rule) on ``objective``: the objective's data, model,
    loss and state; the update rule's step; both methods' settings."""
    rule, base = METHODS[update], METHODS[objective]

    class Composed(base):
        name = f"{update}+{objective}"
        Config = _merged_config(rule, base)
        step_cost = rule.step_cost * base.step_cost

        @classmethod
        def check_run(cls, spec) -> None:
            super().check_run(spec)
            rule.check_run(spec)

        def trainer_class(self) -> type:
            return rule.wrap_trainer(super().trainer_class())

    Composed.__name__ = Composed.__qualname__ = f"{rule.__name__.removesuffix('Method')}{base.__name__}"
    return Composed


def _merged_config(*classes: type[Method]) -> type:
    """One settings dataclass with the fields of every class's ``Config``, in order."""
    fields: dict[str, tuple] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls.Config)
        for f in dataclasses.fields(cls.Config):
            fields.setdefault(f.name, (f.name, hints[f.name], dataclasses.field(
                default=f.default, default_factory=f.default_factory, metadata=f.metadata)))
    name = "".join(c.Config.__name__.removesuffix("Config") for c in classes) + "Config"
    return dataclasses.make_dataclass(name, list(fields.values()))


def setting_fields(name: str | None = None) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Settings by name -> (field, type hint): of method ``name``, or of every registered method."""
    classes = [get_method(name)] if name else [METHODS[n] for n in METHODS.names()]
    out = {}
    for cls in classes:
        hints = typing.get_type_hints(cls.Config)
        out.update({f.name: (f, hints[f.name]) for f in dataclasses.fields(cls.Config) if f.name not in out})
    return out


def setting_columns() -> dict[str, str]:
    """The parquet column of every registered method's settings -> its pandas dtype. Every run's
    rows carry all of them (empty where a setting is not its method's), so a runs folder is one
    table with one set of columns."""
    kinds = {"float": "float64", "int": "Int64", "bool": "boolean"}
    return {f.metadata["column"]: kinds.get(str(hint.__name__ if isinstance(hint, type) else ""), "string")
            for f, hint in setting_fields().values()}


def make_method(spec) -> Method:
    """The method object of a resolved run (a :class:`~forgetting_laws.measure.spec.RunSpec`)."""
    return get_method(spec.method.name)(spec)


from . import distill, ilora, lora, replay, sam  # noqa: E402,F401  (registration)
