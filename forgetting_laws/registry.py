"""A name -> object registry, shared by models, corpora and executors."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "import_plugins", "PLUGINS_ENV"]


class Registry(Generic[T]):
    """Objects registered by name; registering a name twice is an error that names it.

    Example
    -------
    >>> executors = Registry("executor")
    >>> @executors.register("local")
    ... def local(runs): ...
    >>> executors.names()
    ['local']
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its argument under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self._items[name]


#: Environment variable naming modules that register models, corpora or methods (comma-separated).
PLUGINS_ENV = "FORGETTING_LAWS_PLUGINS"


def import_plugins() -> list[str]:
    """Import the modules named in ``$FORGETTING_LAWS_PLUGINS``, so their registrations exist.

    The CLI and every Ray worker call this before a sweep runs: a model alias, corpus or method
    registered in your own module (``FORGETTING_LAWS_PLUGINS=mylab.corpora``) is then known to
    the driver and to the workers alike. Returns the module names.
    """
    import importlib
    import os

    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"{PLUGINS_ENV} names module {name!r}, which cannot be imported ({exc}); "
                              "fix the name or put its folder on PYTHONPATH") from exc
    return names
