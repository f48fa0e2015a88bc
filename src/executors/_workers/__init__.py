"""Workers that behave: identity, state, an exit hook, thread caps, logs in the caller.

Written once for every backend. A backend's constructor makes a
:class:`WorkerSettings` from its options; each worker process calls
:meth:`WorkerSpec.start` first thing (:class:`~executors._bootstrap.WorkerBootstrap`
does it for the backends that install it); the code that runs tasks calls
:func:`after_task` after each one. A thread pool gives each thread a
:class:`WorkerContext` (:func:`enter_thread`).

=================  ==========================================================
``_context``       the worker's side: worker_id(), worker_state(), the spec
                   a process worker starts from, the exit hook, recycling
``_slots``         slots that the kernel frees when their worker dies
``_logsend``       the worker's log handler and its sender thread
``_loglisten``     the caller's listener, which re-emits the records
``_limits``        thread caps, ``"512MB"`` sizes, resident memory
``_settings``      the caller's side: the checked options, the listener
=================  ==========================================================

A worker imports ``_context`` (and what it imports) only: the caller's
side is imported on first use of its names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from ._context import (
    WorkerContext,
    WorkerSpec,
    after_task,
    current,
    enter_thread,
    leave_process,
    leave_thread,
    recycling,
    running_as,
    worker_id,
    worker_state,
)
from ._limits import ProcessWideCap, limit_threads, parse_size, rss_bytes

if TYPE_CHECKING:
    from ._loglisten import LogListener
    from ._settings import AUTO, WorkerSettings

__all__ = [
    "AUTO",
    "LogListener",
    "ProcessWideCap",
    "WorkerContext",
    "WorkerSettings",
    "WorkerSpec",
    "after_task",
    "current",
    "enter_thread",
    "leave_process",
    "leave_thread",
    "limit_threads",
    "parse_size",
    "recycling",
    "rss_bytes",
    "running_as",
    "worker_id",
    "worker_state",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "AUTO": "._settings",
        "WorkerSettings": "._settings",
        "LogListener": "._loglisten",
    },
    __all__,
)
