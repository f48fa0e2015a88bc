"""The worker's end of a call's trip: the preload, the task, the initializer.

Every worker of our local clusters imports this module as its Dask preload
(:func:`dask_setup`), and unpickles :func:`run_task` and
:class:`InitializerPlugin` from it: so it imports nothing of the caller's
side (the executor, the dispatch, the call queue, the cluster's start).

The plugin also makes each worker process a worker of the executor
(:mod:`executors._workers`): its slot, state, thread caps and logs in the
caller as it joins, the finalizer as it closes.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import traceback
from dataclasses import dataclass
from typing import Any

import dask
from distributed import WorkerPlugin

from ..._outcome import Outcome, run_call
from ..._workers import leave_process
from ._quiet import (
    HEALTH_ONLY_ROUTES,
    QuietHandshakes,
    QuietHeartbeats,
    serve_health_only,
)

__all__ = [
    "InitializerFailure",
    "InitializerPlugin",
    "dask_setup",
    "run_task",
    "summarize",
]


# Plugin name -> "Type: message" of its initializer's failure in this worker.
_failed_initializers: dict[str, str] = {}


@dataclass(frozen=True)
class InitializerFailure:
    """What :func:`run_task` returns on a worker whose initializer failed."""

    pid: int
    summary: str


def summarize(exc: BaseException) -> str:
    """The ``"Type: message"`` line of ``exc``."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


class InitializerPlugin(WorkerPlugin):
    """Starts every worker from ``payload``, ``dumps((initializer, initargs, spec))``.

    ``spec`` (a :class:`executors._workers.WorkerSpec`, or ``None``) starts
    first, then ``initializer`` (or ``None``). At the worker's close
    (``teardown``) the spec's finalizer runs and its last log records go.
    """

    def __init__(self, name: str, payload: bytes) -> None:
        self.name = name
        self.payload = payload

    def setup(self, worker: Any) -> None:
        try:
            initializer, initargs, spec = pickle.loads(self.payload)
            if spec is not None:
                spec.start()
            if initializer is not None:
                initializer(*initargs)
        except BaseException as exc:
            _failed_initializers[self.name] = summarize(exc)
            if isinstance(exc, Exception):
                raise
            # SystemExit and friends would stop the worker's event loop.
            raise RuntimeError(f"the initializer raised {exc!r}") from exc

    def teardown(self, worker: Any) -> None:
        if self.name not in _failed_initializers:
            leave_process()
        _failed_initializers.pop(self.name, None)


def dask_setup(worker: Any) -> None:
    """Dask preload hook: ignore Ctrl-C, which the caller handles.

    A terminal's Ctrl-C reaches the workers too: one that stopped would be
    restarted by its nanny, and its task run again. And what Dask would
    log on the caller's terminal (the worker's stderr) though nothing went
    wrong is logged at DEBUG: a connection that speaks no TLS to the
    worker's port, a heartbeat cut short as the worker closes.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    QuietHandshakes(everywhere=True).install()
    QuietHeartbeats().install()
    if dask.config.get("distributed.worker.http.routes") == HEALTH_ONLY_ROUTES:
        serve_health_only(worker)  # no dashboard asked for


def run_task(
    payload: bytes, initializer: str | None, *shared: object
) -> Outcome | InitializerFailure:
    """Run ``dumps((fn, args, kwargs))``; return its outcome, never raise.

    So that a task's errors stay apart from Dask's own. Dask only logs a
    plugin that fails on a late worker: the task reports it instead.
    ``shared``: the values of the shared objects the call uses, which Dask
    placed in this worker's memory as the task's dependencies; the call
    reads them from there.
    """
    if initializer is not None and initializer in _failed_initializers:
        return InitializerFailure(os.getpid(), _failed_initializers[initializer])
    # run_call flushes the task's log records before it returns.
    return run_call(payload)
