"""The worker's side: who this worker is, its state, its exit, its limits.

A worker is a process (its context set by :meth:`WorkerSpec.start`, from
the backend's start-up path) or, for the ``thread`` backend, a thread (its
context set with :func:`enter_thread`). A thread's context wins over its
process's: a thread pool inside a process worker has its own identities.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.util
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .._serialize import unwrap
from ._limits import limit_threads, rss_bytes
from ._logsend import DROPPED_LOGGER, Forwarder
from ._slots import Slot

__all__ = [
    "WorkerContext",
    "WorkerSpec",
    "after_task",
    "current",
    "enter_thread",
    "leave_process",
    "leave_thread",
    "recycling",
    "running_as",
    "worker_id",
    "worker_state",
]

_logger = logging.getLogger(DROPPED_LOGGER)

#: A worker whose memory passed this fraction of ``max_memory_per_child``
#: tells the caller it will leave soon.
SOON_FRACTION = 0.75


class WorkerContext:
    """One worker's identity, state, exit hook and recycling rule."""

    def __init__(
        self,
        index: int | None = None,
        slot: Slot | None = None,
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        max_memory: int | None = None,
        max_tasks: int | None = None,
    ) -> None:
        self.index = index
        self.slot = slot
        self.state: dict[Any, Any] = {}
        self.finalizer = finalizer
        self.finalargs = finalargs
        self.max_memory = max_memory
        self.max_tasks = max_tasks
        self.tasks = 0
        self.forwarder: Forwarder | None = None
        #: Set once a task left the worker over a limit: it should be replaced.
        self.leaving = False
        #: Set once the worker said it will leave soon (once per worker).
        self.soon = False
        self._left = False
        self._lock = threading.Lock()
        # A child forked by a task inherits the exit hooks: not its to run.
        self._pid = os.getpid()

    def worker_id(self) -> int | None:
        if self.index is None and self.slot is not None:
            # A replacement started while the worker it replaces was still
            # exiting: its slot frees in a moment.
            self.index = self.slot.claim()
        return self.index

    def peek_id(self) -> int | None:
        """The slot if claimed, never waiting (for log records)."""
        return self.index

    def after_task(self) -> bool:
        """Flush the task's log records; True when the worker should go.

        Once the worker is past half its ``max_tasks``, or its memory past
        :data:`SOON_FRACTION` of ``max_memory``, it tells the caller it
        will leave soon, once: a backend that listens starts the
        replacement then, so the slot does not wait for a cold start.
        """
        try:
            forwarder = self.forwarder
            if forwarder is not None:
                forwarder.sync()
            self.tasks += 1
            if self.max_tasks is None and self.max_memory is None:
                return False
            soon = False
            if self.max_tasks is not None:
                self.leaving |= self.tasks >= self.max_tasks
                soon = 2 * self.tasks >= self.max_tasks
            if self.max_memory is not None:
                rss = rss_bytes()
                self.leaving |= rss > self.max_memory
                soon |= rss > self.max_memory * SOON_FRACTION
            if (soon or self.leaving) and not self.soon:
                self.soon = True
                if forwarder is not None:
                    forwarder.announce(("l", os.getpid(), self.index))
        except Exception:  # never the task's failure, nor the worker's
            _logger.exception("after_task failed in worker pid %d", os.getpid())
        return self.leaving

    def leave(self) -> None:
        """Run the finalizer, then send the last records; once, never raising."""
        with self._lock:
            if self._left or os.getpid() != self._pid:
                return
            self._left = True
        if self.finalizer is not None:
            try:
                self.finalizer(*self.finalargs)
            except BaseException:
                target = unwrap(self.finalizer)
                _logger.exception(
                    "the finalizer %s raised in worker %s (pid %d)",
                    getattr(target, "__qualname__", None) or repr(target),
                    self.index,
                    os.getpid(),
                )
        forwarder, self.forwarder = self.forwarder, None
        if forwarder is not None:
            logging.getLogger().removeHandler(forwarder)
            forwarder.close()
        if self.slot is not None:
            self.slot.release()


_process: WorkerContext | None = None
_thread = threading.local()


def current() -> WorkerContext | None:
    """The context of the worker running this code, or ``None``."""
    context: WorkerContext | None = getattr(_thread, "context", None)
    return context if context is not None else _process


def worker_id() -> int | None:
    """The slot of the worker running this task, an ``int`` in ``range(max_workers)``.

    Stable across the tasks a worker runs; a worker that replaces another
    (after a crash or recycling) takes the slot of the one it replaces.
    ``None`` outside any worker, and on a backend that does not declare
    ``Capabilities.worker_identity``.
    """
    context = current()
    return None if context is None else context.worker_id()


def worker_state() -> dict[Any, Any]:
    """A ``dict`` that lives as long as the worker running this task.

    For what a worker should make once and keep, such as a model loaded for
    its tasks; a worker that replaces another starts with an empty one. Per
    process on process backends, per thread on ``thread``.

    Raises:
        RuntimeError: Called outside a worker (or on a backend that does
            not declare ``Capabilities.worker_identity``).
    """
    context = current()
    if context is None:
        raise RuntimeError(
            "executors.worker_state() was called outside a worker: it is "
            "for tasks of an executor whose backend declares "
            "Capabilities.worker_identity"
        )
    return context.state


def after_task() -> bool:
    """Called after each task in a worker: True when the worker should go.

    Flushes the task's log records to the caller first, so that they have
    been handled there before its result is sent. Free outside a worker.
    """
    context = current()
    return False if context is None else context.after_task()


def recycling() -> tuple[bool, bool]:
    """``(leaving, soon)`` of this worker after :func:`after_task`.

    ``leaving``: over a limit, it should go now; ``soon``: it is past the
    point where its replacement should start (true from then on). For a
    worker loop that tells its pool in band, rather than through
    ``WorkerSettings(on_leaving=)``.
    """
    context = current()
    if context is None:
        return False, False
    return context.leaving, context.soon


def enter_thread(context: WorkerContext) -> None:
    """Make ``context`` the current thread's worker context."""
    _thread.context = context


@contextlib.contextmanager
def running_as(context: WorkerContext) -> Iterator[WorkerContext]:
    """Run a task of ``context`` in this thread, then restore what was here.

    For a backend that runs tasks in the caller's own thread (``inline``):
    a task of an inline executor inside a task of a pool worker is the
    inline executor's worker while it runs, and the pool's again after.
    """
    previous: WorkerContext | None = getattr(_thread, "context", None)
    _thread.context = context
    try:
        yield context
    finally:
        _thread.context = previous


def leave_thread() -> None:
    """Leave the current thread's worker context (its finalizer runs)."""
    context: WorkerContext | None = getattr(_thread, "context", None)
    if context is not None:
        context.leave()  # worker_id() still answers in the finalizer
    _thread.context = None


def leave_process() -> None:
    """Leave this process's worker context, for a backend's own exit hook."""
    context = _process
    if context is not None:
        context.leave()


def _forget_in_child() -> None:
    # A child forked by a task is not the worker (a nested pool's workers
    # start their own context).
    global _process
    _process = None
    _thread.context = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


@dataclass
class WorkerSpec:
    """What a process worker needs to start as one, pickled to it.

    Made in the caller by :meth:`~executors._workers.WorkerSettings.spec`.
    """

    token: str
    slots: int | None = None
    #: The slot, for a backend that numbers its workers itself (no claim).
    index: int | None = None
    folder: str | None = None
    threads: int | None = None
    log_address: str | None = None
    log_secret: bytes = b""
    #: Install the log handler; without it the connection carries only
    #: the notices of a worker that will leave (recycling).
    forward: bool = True
    levels: dict[str, int] = field(default_factory=dict)
    finalizer: Callable[..., object] | None = None
    finalargs: tuple[Any, ...] = ()
    max_memory: int | None = None
    max_tasks: int | None = None
    allow_children: bool = True

    def start(self, index: int | None = None) -> WorkerContext:
        """Make this process a worker: call first thing in its start-up.

        Caps the native thread pools (before the initializer imports them),
        lets tasks start processes of their own, claims a slot, connects
        the logs and arranges for the finalizer to run at a normal exit.

        Args:
            index: This worker's slot, for a backend that numbers its
                workers itself (the queue pool, billiard's ``index``);
                then no slot is claimed.
        """
        global _process
        if index is not None:
            self.index, self.slots = index, None
        if self.threads is not None:
            limit_threads(self.threads)
        if self.allow_children:
            _allow_children()
        context = WorkerContext(
            self.index,
            None,
            self.finalizer,
            self.finalargs,
            self.max_memory,
            self.max_tasks,
        )
        if self.log_address is not None:
            _connect(context, self.log_address, self.log_secret)
            if self.forward and context.forwarder is not None:
                _forward_logs(context.forwarder, self.levels)
        _process = context
        if self.slots is not None:
            # Before any task (and after the logs, which carry its warning):
            # a spare started ahead of a recycled worker waits here, started
            # and idle, until that worker leaves.
            context.slot = Slot(self.token, self.slots, self.folder)
            context.index = context.slot.claim(wait=None)
        # multiprocessing's children end through os._exit after running its
        # finalizers, not atexit: register both (leave() runs once).
        multiprocessing.util.Finalize(None, context.leave, exitpriority=100)
        atexit.register(context.leave)
        return context


def _allow_children() -> None:
    """Let a task start processes, though its worker was started as a daemon.

    ``multiprocessing`` refuses children to a daemonic process ("daemonic
    processes are not allowed to have children"; pebble#76, joblib#1609),
    and Pool's and Dask's workers are daemonic. The flag matters only to
    this process's own view: its parent still ends it as a daemon, and
    the pools a task starts tie their workers to this worker's life.
    """
    process = multiprocessing.current_process()
    if process.daemon:
        process.daemon = False
    method = multiprocessing.get_start_method(allow_none=True)
    if method is not None and method not in multiprocessing.get_all_start_methods():
        # loky makes its own ("loky") the default in its workers; a stdlib
        # pool started by a task passes the default to its workers, which
        # fail with "cannot find context for 'loky'". Back to the stdlib's.
        multiprocessing.set_start_method(None, force=True)


def _connect(context: WorkerContext, address: str, secret: bytes) -> None:
    # OSError: the caller is gone or closing; the worker ends with it.
    with contextlib.suppress(OSError):
        context.forwarder = Forwarder(address, secret, context.peek_id)


def _forward_logs(forwarder: Forwarder, levels: dict[str, int]) -> None:
    root = logging.getLogger()
    # A forked worker inherits the caller's handlers: its records would be
    # shown twice, once here and once in the caller. The initializer runs
    # after this and may add handlers of its own.
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(forwarder)
    # The caller's levels, so that what it would show is sent, no more.
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)
