"""Run small-matrix numerics with single-threaded BLAS.

L-BFGS-B on a handful of parameters calls BLAS on vectors of length ~10; a
multi-threaded OpenBLAS then spends far longer waking and spinning its threads
than computing (several times slower on an idle machine, up to 10x on a loaded
one). :func:`single_threaded_blas` limits BLAS to one thread for the duration
of a fit, through ``threadpoolctl`` when installed, else through the
``*_set_num_threads`` entry points of the OpenBLAS builds that numpy and scipy
ship, and does nothing where neither is found.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.util
import os
from collections.abc import Iterator

_SYMBOLS = (  # (getter, setter) of the OpenBLAS builds in numpy/scipy wheels
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)
_HANDLES: list[tuple[object, object]] | None = None


def _openblas_handles() -> list[tuple[object, object]]:
    global _HANDLES
    if _HANDLES is None:
        _HANDLES = []
        for pkg in ("numpy", "scipy"):
            spec = importlib.util.find_spec(pkg)
            if spec is None or spec.origin is None:
                continue
            libdir = os.path.join(os.path.dirname(os.path.dirname(spec.origin)), f"{pkg}.libs")
            for path in glob.glob(os.path.join(libdir, "*openblas*")):
                _HANDLES += _entry_points(path)
    return _HANDLES


def _entry_points(path: str) -> list[tuple[object, object]]:
    try:
        lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
    except OSError:  # not loaded in this process: nothing to limit
        return []
    for get, set_ in _SYMBOLS:
        if hasattr(lib, get) and hasattr(lib, set_):
            return [(getattr(lib, get), getattr(lib, set_))]
    return []


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Context manager: BLAS uses one thread inside, its previous setting after."""
    if importlib.util.find_spec("threadpoolctl") is not None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    handles = _openblas_handles()
    before = [get() for get, _ in handles]
    for _, set_ in handles:
        set_(1)
    try:
        yield
    finally:
        for (_, set_), n in zip(handles, before):
            set_(n)
