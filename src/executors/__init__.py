"""One Executor API over many ways of running Python functions in parallel.

Write ``submit`` / ``map`` / ``shutdown`` once and pick the backend by name::

    import executors

    with executors.create("process", max_workers=2) as ex:
        print(list(ex.map(abs, [-1, -2, -3])))

Importing this package is cheap: no backend (and none of joblib, dask or
tqdm) is imported until it is chosen.
"""

from __future__ import annotations

from ._base import BaseExecutor, fail_futures
from ._callqueue import Call, CallQueue
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
from ._futures import Future, settle
from ._protocol import Executor
from ._registry import BackendInfo, create, list_backends
from ._remote import RemoteTraceback
from .pool import Pool

__all__ = [
    "BackendInfo",
    "BackendNotFoundError",
    "BackendNotInstalledError",
    "BaseExecutor",
    "Call",
    "CallQueue",
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
    "create",
    "fail_futures",
    "list_backends",
    "settle",
    "with_options",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # executors.aio imports asyncio (~100 ms cold): only for those who use it,
    # and not in every spawned worker.
    if name == "aio":
        import importlib

        return importlib.import_module(".aio", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
