"""Fine-tuning methods, one file each, in a registry: ``lora``, ``sam``, ``ilora``, ``replay``.

A spec chooses one with ``[method] name = "..."`` (default ``lora``) and sets its knobs in the
same table; ``"method.name"`` can be a ``[grid]`` axis. One ``[method]`` table may carry the
knobs of several methods: each run keeps only its own. Adding a method is one new file here
plus its import line below.

Example
-------
>>> sorted(method_names())
['ilora', 'lora', 'replay', 'sam']
>>> [k.name for k in get_method("sam").knobs]
['rho', 'adaptive']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ...errors import ConfigError
from .base import Knob, Method

if TYPE_CHECKING:  # pragma: no cover
    from ..config import RunSpec

__all__ = ["Method", "Knob", "register_method", "get_method", "method_names", "all_knobs", "make_method"]

_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a :class:`Method` under ``cls.name`` (once)."""
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} is already registered")
    shared = all_knobs()
    for knob in cls.knobs:  # a knob shared by two methods must mean the same thing in both
        if knob.name in shared and shared[knob.name] != knob:
            raise ValueError(f"method {cls.name!r}: knob {knob.name!r} differs from the registered one")
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def get_method(name: str, field: str = "method.name") -> type[Method]:
    """The method class registered as ``name``; a clear error otherwise."""
    if not isinstance(name, str) or name not in _METHODS:
        raise ConfigError(f"{field} = {name!r} is not a registered method; methods: {', '.join(method_names())}")
    return _METHODS[name]


def all_knobs() -> dict[str, Knob]:
    """Every registered knob by name (a knob shared by methods appears once)."""
    return {k.name: k for cls in _METHODS.values() for k in cls.knobs}


def make_method(spec: "RunSpec") -> Method:
    """The method object of a resolved run."""
    return get_method(spec.method.name)(spec)


from . import ilora, lora, replay, sam  # noqa: E402,F401  (registration)
