"""How every worker process starts: one bootstrap for every process backend.

:class:`WorkerBootstrap` is the initializer every process backend installs.
It ties the worker's life to the caller's
(:func:`executors._parentwatch.exit_with_parent`), makes the process a
worker of the executor when given a :class:`~executors._workers.WorkerSpec`
(slot, state, thread caps, logs in the caller, finalizer; see
:mod:`executors._workers`), and runs the user's initializer; if that
raises, the worker prints the traceback and exits with
:data:`INITIALIZER_FAILED_EXITCODE`, which the caller reads as "the
initializer failed" (:func:`initializer_error`).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import InitializerFailedError, describe_exitcode
from ._parentwatch import exit_with_parent
from ._remote import RemoteTraceback

if TYPE_CHECKING:
    from ._workers import WorkerSpec

__all__ = ["INITIALIZER_FAILED_EXITCODE", "WorkerBootstrap", "initializer_error"]

#: Exit code of a worker whose initializer raised (after printing it).
INITIALIZER_FAILED_EXITCODE = 77


class WorkerBootstrap:
    """The initializer of every worker process a backend starts.

    Args:
        parent_pid: The caller's pid: the worker exits when it dies.
        initializer: The user's initializer, or ``None``.
        initargs: Its arguments.
        worker: What makes the process a worker of the executor (from
            :meth:`executors._workers.WorkerSettings.spec`), started before
            the initializer, so that the thread caps precede what it
            imports and its log records reach the caller; ``None``: none
            of that, as before.
    """

    __slots__ = ("initargs", "initializer", "parent_pid", "worker")

    def __init__(
        self,
        parent_pid: int,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        worker: WorkerSpec | None = None,
    ) -> None:
        self.parent_pid = parent_pid
        self.initializer = initializer
        self.initargs = initargs
        self.worker = worker

    def __call__(self) -> None:
        exit_with_parent(self.parent_pid)
        if self.worker is not None:
            self.worker.start()
        if self.initializer is None:
            return
        try:
            self.initializer(*self.initargs)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(INITIALIZER_FAILED_EXITCODE)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return WorkerBootstrap, (
            self.parent_pid,
            self.initializer,
            self.initargs,
            self.worker,
        )


def initializer_error(
    backend: str,
    pid: int | None,
    summary: str | None = None,
    text: str | None = None,
    exitcode: int | None = None,
    *,
    cause: BaseException | None = None,
    where: str | None = None,
) -> InitializerFailedError:
    """The error of an executor whose initializer failed in a worker.

    The one wording of it, whichever way the backend learnt of the failure.

    Args:
        backend: The backend's name.
        pid: The worker's pid, if known.
        summary: ``"Type: message"`` of the initializer's exception, when
            the worker could report it.
        text: Its formatted traceback, chained as ``__cause__``.
        exitcode: The worker's exit code when it died instead.
        cause: The exception itself, where it reached the caller (a thread,
            the caller itself, an unpickled report): summary and cause.
        where: Where it ran, when not in a worker process ("in a thread").
    """
    if where is None:
        where = f"in worker pid {pid}" if pid is not None else "in a worker"
    if cause is not None:
        summary = f"{type(cause).__name__}: {cause}"
    if summary is not None:
        error = InitializerFailedError(
            f"the initializer of the {backend!r} executor raised {where}: "
            f"{summary}; the executor is broken"
        )
        if cause is not None:
            error.__cause__ = cause
        elif text is not None:
            error.__cause__ = RemoteTraceback(text)
        return error
    if exitcode == INITIALIZER_FAILED_EXITCODE:
        return InitializerFailedError(
            f"the initializer of the {backend!r} executor raised {where} "
            "(its traceback was printed to the worker's stderr); the executor "
            "is broken"
        )
    return InitializerFailedError(
        f"a worker of the {backend!r} executor died with "
        f"{describe_exitcode(exitcode)} while its initializer ran"
        f"{'' if pid is None else f' (pid {pid})'}; the executor is broken"
    )
