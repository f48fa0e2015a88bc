"""Worker limits: thread pools of native libraries, memory sizes, resident memory.

Runs in workers: imports nothing of the caller's side, and threadpoolctl
only when a library it caps is already loaded.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

__all__ = [
    "THREAD_VARIABLES",
    "ProcessWideCap",
    "default_threads_per_worker",
    "limit_threads",
    "parse_size",
    "rss_bytes",
]

#: The environment variables that size the thread pools of BLAS and OpenMP
#: libraries when they load: OpenMP (GCC, LLVM, Intel), OpenBLAS, MKL,
#: Apple's Accelerate, BLIS and numexpr.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# Modules that load a native thread pool as they are imported: when one is
# already in the worker (imported by the main module before the worker's
# start-up ran, or inherited by fork), the environment comes too late for
# it and threadpoolctl caps it in place.
_NATIVE_POOL_MODULES = (
    "numpy",
    "scipy",
    "sklearn",
    "torch",
    "numexpr",
    "mkl",
    "cv2",
    "xgboost",
    "lightgbm",
)

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def parse_size(value: object, name: str = "max_memory_per_child") -> int | None:
    """Bytes from an ``int`` or a string such as ``"512MB"`` or ``"1.5GiB"``.

    Units are decimal (``kB``, ``MB``, ``GB``, ``TB``, as Dask reads them)
    or binary (``KiB``, ``MiB``, ``GiB``, ``TiB``), in any case; ``None``
    means no limit.

    Raises:
        TypeError: Neither ``None``, an ``int`` nor a ``str``.
        ValueError: Not a size, or not positive.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"{name} must be a number of bytes or a string such as '512MB', "
            f"got {value!r}"
        )
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{name} must be a size such as '512MB', '1.5GiB' or 1000000, "
                f"got {value!r}"
            )
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")
    return size


def rss_bytes() -> int:
    """This process's resident memory, in bytes.

    From ``/proc/self/statm`` on Linux (a few microseconds, cheap enough
    after every task); elsewhere through psutil, or the peak from
    ``getrusage`` when psutil is missing (an upper bound: a worker that
    once peaked over its limit is replaced at its next task).
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Kilobytes on Linux and the BSDs, bytes on macOS.
        return int(peak if sys.platform == "darwin" else peak * 1024)
    return int(psutil.Process().memory_info().rss)


def default_threads_per_worker(workers: int, cpus: int) -> int:
    """``max(1, cpus // workers)``: what Dask and joblib's loky engine give."""
    return max(1, cpus // max(1, workers))


def limit_threads(threads: int, environment: bool = True) -> Any:
    """Cap the BLAS and OpenMP thread pools of this process at ``threads``.

    Sets :data:`THREAD_VARIABLES` (with ``environment``), read by libraries
    loaded from now on and inherited by the worker's own children, and caps
    the pools of libraries already loaded with threadpoolctl, when it is
    installed.

    Returns:
        threadpoolctl's limiter, whose ``restore_original_limits()`` undoes
        the cap on the loaded libraries, or ``None`` when none was loaded or
        threadpoolctl is missing.
    """
    if environment:
        for variable in THREAD_VARIABLES:
            os.environ[variable] = str(threads)
    if not any(name in sys.modules for name in _NATIVE_POOL_MODULES):
        return None
    try:
        # Imported by name: an optional dependency, without type stubs.
        threadpoolctl = importlib.import_module("threadpoolctl")
    except ImportError:
        return None
    return threadpoolctl.threadpool_limits(limits=threads)


class ProcessWideCap:
    """``threads_per_worker`` where the workers are the caller's own threads.

    The native pools are process-wide: the cap is the caller's too, so the
    ``thread`` and ``inline`` backends apply it only when asked for, while
    the executor is open, and :meth:`restore` undoes it at shutdown.
    """

    def __init__(self, threads: int) -> None:
        self._environ = {name: os.environ.get(name) for name in THREAD_VARIABLES}
        self._limiter = limit_threads(threads)

    def restore(self) -> None:
        if self._limiter is not None:
            self._limiter.restore_original_limits()
        for name, value in self._environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
