"""One Executor API over many ways of running Python functions in parallel.

Write ``submit`` / ``map`` / ``shutdown`` once and pick the backend by name::

    import executors

    with executors.create("process", max_workers=2) as ex:
        print(list(ex.map(abs, [-1, -2, -3])))

Importing this package is cheap: no backend (and none of joblib, dask or
tqdm) is imported until it is chosen.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._capabilities import Capabilities
    from ._control import with_options
    from ._errors import (
        BackendNotFoundError,
        BackendNotInstalledError,
        DaskClusterError,
        ExecutorFailedError,
        ExecutorInterruptedError,
        InitializerFailedError,
        TaskKilledError,
        TaskTimeoutError,
        WorkerCrashedError,
        WorkersTerminatedError,
    )
    from ._futures import Future
    from ._protocol import Executor
    from ._registry import BackendInfo, create, list_backends
    from ._remote import RemoteTraceback
    from ._workers import worker_id, worker_state
    from .pool import Pool

__all__ = [
    "BackendInfo",
    "BackendNotFoundError",
    "BackendNotInstalledError",
    "Capabilities",
    "DaskClusterError",
    "Executor",
    "ExecutorFailedError",
    "ExecutorInterruptedError",
    "Future",
    "InitializerFailedError",
    "Pool",
    "RemoteTraceback",
    "TaskKilledError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkersTerminatedError",
    "aio",
    "backend",
    "create",
    "list_backends",
    "with_options",
    "worker_id",
    "worker_state",
]

__version__ = "0.1.0"


# Where each public name lives. Each is imported on first use: a worker
# process that unpickles one of our functions (every process backend's
# initializer is executors._outcome.WorkerBootstrap) imports this package,
# and must not pay for the whole library (15 to 20 ms more per worker).
_HOMES = {
    "BackendInfo": "._registry",
    "BackendNotFoundError": "._errors",
    "BackendNotInstalledError": "._errors",
    "Capabilities": "._capabilities",
    "DaskClusterError": "._errors",
    "Executor": "._protocol",
    "ExecutorFailedError": "._errors",
    "ExecutorInterruptedError": "._errors",
    "Future": "._futures",
    "InitializerFailedError": "._errors",
    "Pool": ".pool",
    "RemoteTraceback": "._remote",
    "TaskKilledError": "._errors",
    "TaskTimeoutError": "._errors",
    "WorkerCrashedError": "._errors",
    "WorkersTerminatedError": "._errors",
    "create": "._registry",
    "list_backends": "._registry",
    "with_options": "._control",
    "worker_id": "._workers",
    "worker_state": "._workers",
}

# Names for backend authors, now in executors.backend; still found here,
# with a warning, for one release.
_MOVED_TO_BACKEND = frozenset(
    {"BaseExecutor", "Call", "CallQueue", "fail_futures", "settle"}
)


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is not None:
        value = getattr(importlib.import_module(home, __name__), name)
    elif name in _MOVED_TO_BACKEND:
        import warnings

        warnings.warn(
            f"executors.{name} is for backend authors and has moved: "
            f"use executors.backend.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        # Not cached in globals(): each use warns.
        return getattr(importlib.import_module(".backend", __name__), name)
    elif name == "aio":
        # asyncio costs ~100 ms cold: only for those who use it.
        value = importlib.import_module(".aio", __name__)
    elif name == "backend":
        value = importlib.import_module(".backend", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
