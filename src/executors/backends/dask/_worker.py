"""What runs in a Dask worker: the task, the initializer, Ctrl-C immunity.

A worker unpickles the call and pickles its outcome with
:mod:`executors._outcome`, as every process backend does; Dask moves only
bytes. What is Dask's own here:

* :class:`InitializerPlugin` runs the executor's initializer in every
  worker, workers that join or restart later included. Dask only logs a
  plugin that fails on a late worker, so :func:`run_task` checks first and
  reports :class:`InitializerFailure` instead of running the task.
* :func:`dask_setup`, the preload of the local cluster's workers: they
  ignore SIGINT (the caller owns their lives).

(Importing ``distributed`` installs ``tblib``'s exception reducers
process-wide; ``_outcome``'s pickler and ``_remote`` pickle exceptions the
standard way regardless.)
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import traceback
from typing import Any

from distributed import WorkerPlugin

from ..._outcome import Outcome, run_call

__all__ = ["InitializerFailure", "InitializerPlugin", "dask_setup", "run_task"]

# Initializers that failed in this worker process, by plugin name, with the
# "Type: message" line of their exception.
_failed_initializers: dict[str, str] = {}


class InitializerFailure:
    """What :func:`run_task` returns on a worker whose initializer failed.

    Attributes:
        pid: The worker's pid.
        summary: ``"Type: message"`` of the initializer's exception.
    """

    __slots__ = ("pid", "summary")

    def __init__(self, pid: int, summary: str) -> None:
        self.pid = pid
        self.summary = summary

    def __reduce__(self) -> tuple[Any, tuple[int, str]]:
        return InitializerFailure, (self.pid, self.summary)


class InitializerPlugin(WorkerPlugin):
    """Runs the executor's initializer in every worker, new ones included.

    The initializer travels as bytes pickled in the caller, so neither the
    scheduler nor Dask's plugin machinery unpickles it.

    Args:
        name: The plugin's unique name.
        payload: ``dumps((initializer, initargs))``.
    """

    def __init__(self, name: str, payload: bytes) -> None:
        self.name = name
        self.payload = payload

    def setup(self, worker: Any) -> None:
        try:
            initializer, initargs = pickle.loads(self.payload)
            initializer(*initargs)
        except BaseException as exc:
            _failed_initializers[self.name] = "".join(
                traceback.format_exception_only(type(exc), exc)
            ).strip()
            if isinstance(exc, Exception):
                raise
            # SystemExit and friends would stop the worker's event loop.
            raise RuntimeError(f"the initializer raised {exc!r}") from exc

    def teardown(self, worker: Any) -> None:
        _failed_initializers.pop(self.name, None)


def dask_setup(worker: Any) -> None:
    """Dask preload hook: a worker of our local cluster ignores Ctrl-C.

    Ctrl-C in a terminal sends SIGINT to the whole foreground process group,
    the workers included. A worker that got it would stop on its own, wait
    for its task, and be restarted by its nanny; the task would run again.
    The caller owns the workers' lives: it gets the ``KeyboardInterrupt``
    and stops them (at once when a ``with`` block or the program ends on
    it). Dask calls this on the worker's event loop, the main thread of the
    worker process, where signal handlers can be set.

    Args:
        worker: The starting :class:`distributed.Worker` (unused).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_task(payload: bytes, initializer: str | None) -> Outcome | InitializerFailure:
    """Run one task in a Dask worker; never raise into Dask.

    Dask would pickle an exception its own way, and a failure of Dask's
    machinery must stay distinguishable from the task's own error.

    Args:
        payload: ``dumps((fn, args, kwargs))``.
        initializer: The name of the executor's initializer plugin, if any.
    """
    if initializer is not None and initializer in _failed_initializers:
        return InitializerFailure(os.getpid(), _failed_initializers[initializer])
    return run_call(payload)
