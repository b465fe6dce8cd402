"""One name -> object registry class, for laws, methods, models, corpora and executors.

A registry can also hold *lazy* entries, ``"package.module:attribute"`` strings imported on first
use, so an optional backend (Ray) costs nothing until a run asks for it.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")

__all__ = ["Registry", "import_plugins", "PLUGINS_ENV"]


class Registry(Generic[T]):
    """Objects registered by name; registering a name twice is an error that names it.

    Parameters
    ----------
    kind
        What the registry holds ("law", "method", ...), used in every message.
    same
        ``same(old, new) -> bool``: a second registration of a name is accepted (and replaces the
        first) when it is the same object as far as this says. Laws use it so that re-running a
        notebook cell that registers a law works.

    Example
    -------
    >>> executors = Registry("executor")
    >>> @executors.register("local")
    ... def local(runs): ...
    >>> executors.add_lazy("remote", "json:dumps")
    >>> executors.names()
    ['local', 'remote']
    """

    def __init__(self, kind: str, same: Callable[[T, T], bool] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._same = same

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` under ``name``; without ``obj``, a decorator that does it."""
        if obj is None:
            return lambda o: self.register(name, o)
        if name in self._lazy or (name in self._items and not (self._same and self._same(self._items[name], obj))):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def add_lazy(self, name: str, target: str) -> None:
        """Register ``"module:attribute"`` under ``name``, imported when first looked up."""
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._lazy[name] = target

    def names(self) -> list[str]:
        return sorted({*self._items, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def __getitem__(self, name: str) -> T:
        if name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            self._items[name] = getattr(importlib.import_module(module), attr)
            del self._lazy[name]
        return self._items[name]

    def get(self, name: str, field: str) -> T:
        """The object registered as ``name``, or a :class:`ConfigError` naming ``field`` and the choices."""
        if not isinstance(name, str) or name not in self:
            raise ConfigError(f"{field} = {name!r} is not a registered {self.kind}; "
                              f"{self.kind}s: {', '.join(self.names())}")
        return self[name]


#: Environment variable naming modules that register models, corpora or methods (comma-separated).
PLUGINS_ENV = "FORGETTING_LAWS_PLUGINS"


def import_plugins() -> list[str]:
    """Import the modules named in ``$FORGETTING_LAWS_PLUGINS``, so their registrations exist.

    The CLI and every Ray worker call this before a sweep runs: a model alias, corpus or method
    registered in your own module (``FORGETTING_LAWS_PLUGINS=mylab.corpora``) is then known to
    the driver and to the workers alike. Returns the module names.
    """
    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"{PLUGINS_ENV} names module {name!r}, which cannot be imported ({exc}); "
                              "fix the name or put its folder on PYTHONPATH") from exc
    return names
