"""Fine-tuning methods, one file each, in a registry: ``lora``, ``sam``, ``ilora``, ``replay``.

A spec chooses one with ``[method] name = "..."`` (default ``lora``) and sets its settings in
the same table; ``"method.name"`` can be a ``[grid]`` axis. One ``[method]`` table may carry the
settings of several methods: each run keeps only its own. A method's settings are a dataclass
(its ``Config``) checked by the same code as every spec section. Adding a method is one new file
here plus its import line below.

Example
-------
>>> method_names()
['ilora', 'lora', 'replay', 'sam']
>>> list(setting_fields("sam"))
['rho', 'adaptive']
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from ...registry import Registry
from .base import Method

__all__ = ["Method", "register_method", "get_method", "method_names", "setting_fields", "setting_columns",
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
    """Registered method names, sorted."""
    return METHODS.names()


def get_method(name: str, field: str = "method.name") -> type[Method]:
    """The method class registered as ``name``; a clear error otherwise."""
    return METHODS.get(name, field)


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


from . import ilora, lora, replay, sam  # noqa: E402,F401  (registration)
