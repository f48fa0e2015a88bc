"""Backend ``process``: the stdlib :class:`~concurrent.futures.ProcessPoolExecutor`.

Behaviour is the stdlib's on everything the stdlib defines: the same futures,
messages and :class:`~concurrent.futures.process.BrokenProcessPool` when a
worker dies (the pool is then broken for good and every pending future
fails). What the project adds: the shared ``map`` (automatic chunking, lazy
``buffersize``, ``map_unordered``, progress), callables sent with cloudpickle,
a safe default start method (see :data:`executors._options.DEFAULT_START_METHOD`),
workers that exit when the process owning the pool dies (even by SIGKILL),
a program ended by Ctrl-C that stops its running tasks instead of waiting
for them, and a fix for ``max_tasks_per_child`` hanging with a backlog
(CPython gh-115634).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import (
    BrokenProcessPool,
    _ExecutorManagerThread,
    _process_worker,
)
from multiprocessing.context import BaseContext
from typing import Any, TypeVar, cast

from .._base import BaseExecutor, notify_cancelled
from .._capabilities import Capabilities
from .._options import check_process_pool_options, cpu_count
from .._parentwatch import exit_with_parent

__all__ = ["ProcessExecutor"]

T = TypeVar("T")

# The stdlib caps workers at 61 on Windows (WaitForMultipleObjects); the same
# default keeps behaviour identical everywhere.
_MAX_DEFAULT_WORKERS = 61

# CPython gh-115634: with max_tasks_per_child, a worker that exits at its
# limit is not replaced while a stale idle-worker token is left, and the
# backlog then waits for good (3.11 to 3.13.0 at least). The upstream fix
# (gh-140900, backported to 3.13) replaces an exited worker without looking
# at the semaphore, which _Pool does here; a fixed Python no longer calls
# _adjust_process_count on a worker's exit, so the override is then inert.
_REPLACEMENT_BUG = (3, 11) <= sys.version_info[:2] <= (3, 13)


def _start_worker(
    owner_pid: int,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> None:
    """Run in each worker as it starts, in place of the user's initializer.

    The worker first arranges to exit when the pool's owner dies (a caller
    killed with SIGKILL runs no cleanup, and the stdlib's workers would wait
    on their call queue forever), then runs the user's initializer exactly
    as the stdlib would: if it raises, the pool breaks as before.
    """
    exit_with_parent(owner_pid)
    if initializer is not None:
        initializer(*initargs)


class _Pool(ProcessPoolExecutor):
    """The stdlib pool, with exited workers always replaced (gh-115634)."""

    def _adjust_process_count(self) -> None:
        manager = threading.current_thread()
        # The manager thread calls this only when a worker exited at its
        # max_tasks_per_child limit; submit() calls it from other threads.
        if _REPLACEMENT_BUG and isinstance(manager, _ExecutorManagerThread):
            self._replace_exited_worker(manager)
        else:
            super()._adjust_process_count()

    def _replace_exited_worker(self, manager: _ExecutorManagerThread) -> None:
        # The manager's own references: shutdown(wait=False) sets the
        # executor's to None while the manager still runs the backlog.
        # (typeshed declares neither the pool's options nor its context.)
        pool: Any = self
        processes = manager.processes
        if len(processes) >= pool._max_workers:
            return
        worker = pool._mp_context.Process(
            target=_process_worker,
            args=(
                manager.call_queue,
                manager.result_queue,
                pool._initializer,
                pool._initargs,
                pool._max_tasks_per_child,
            ),
        )
        worker.start()
        processes[worker.pid] = worker


class ProcessExecutor(BaseExecutor):
    """A pool of worker processes run by the stdlib.

    Args:
        max_workers: Worker processes; default: the usable CPUs (at most 61).
        mp_context: Start method name or multiprocessing context; default
            ``"forkserver"`` on POSIX.
        initializer: Called in each worker as it starts; if it raises, the
            pool is broken.
        initargs: Arguments for ``initializer``.
        max_tasks_per_child: Replace a worker after this many tasks
            (Python 3.11+).
        cloudpickle: Send the callable with cloudpickle (lambdas work).
    """

    backend = "process"
    capabilities = Capabilities()

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        mp_context: str | BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        cloudpickle: bool = True,
    ) -> None:
        workers, context, per_child = check_process_pool_options(
            max_workers=max_workers,
            default_workers=min(_MAX_DEFAULT_WORKERS, cpu_count()),
            mp_context=mp_context,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
        )
        super().__init__(max_workers=workers, cloudpickle=cloudpickle)
        extra: dict[str, Any] = {}
        if per_child is not None:
            if sys.version_info < (3, 11):
                raise ValueError(
                    "the 'process' backend supports max_tasks_per_child on "
                    "Python 3.11 and later only"
                )
            extra["max_tasks_per_child"] = per_child
        self._manager: threading.Thread | None = None
        self._pool = _Pool(
            workers,
            context,
            _start_worker,
            (os.getpid(), initializer, initargs),
            **extra,
        )

    def _broken_error(self) -> BaseException | None:
        broken = self._pool._broken
        return BrokenProcessPool(broken) if broken else None

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        return self._pool.submit(fn, *args, **kwargs)

    def close_at_exit(self) -> None:
        """At interpreter exit: finish the submitted work, unless Ctrl-C ended it.

        A program ended by an unhandled ``KeyboardInterrupt`` (without a
        ``with`` block, or with the executor kept elsewhere) stops its
        running tasks as a ``with`` block leaving on Ctrl-C does, instead of
        waiting for them: the map it was interrupted in may have chunks that
        run for minutes.
        """
        if _ending_on_keyboard_interrupt():
            self._interrupt()
            self.shutdown(wait=True, cancel_futures=True)
        else:
            super().close_at_exit()

    def _interrupt(self) -> None:
        # Terminate the workers, as Python 3.14's terminate_workers() does:
        # the manager thread then fails their futures and exits.
        processes = dict(self._pool._processes or {})
        self.shutdown(wait=False, cancel_futures=True)
        for proc in processes.values():
            # It may have exited, or been closed, since the copy.
            with contextlib.suppress(ValueError, OSError):
                if proc.is_alive():
                    proc.terminate()

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        # The stdlib drops its manager thread on the first shutdown(), so a
        # later shutdown(wait=True) would not wait: keep our own reference.
        # (typeshed mistypes _executor_manager_thread as _ThreadWakeup.)
        current = cast("threading.Thread | None", self._pool._executor_manager_thread)
        manager = current or self._manager
        self._manager = manager
        # The manager thread cancels what is still queued and then forgets
        # it; those futures are notified once it is gone (notify_cancelled).
        queued = (
            [item.future for item in self._pool._pending_work_items.copy().values()]
            if cancel_futures
            else []
        )
        self._pool.shutdown(wait, cancel_futures=cancel_futures)
        if manager is None:
            return
        if wait:
            # From a done callback the manager cannot wait for itself; its
            # queued futures then stay as the stdlib leaves them.
            if manager is not threading.current_thread():
                manager.join()
                # Done with it: the thread object holds the pool's pipes and
                # the workers' sentinels, which must close with the pool.
                self._manager = None
                notify_cancelled(queued)
        elif queued:
            threading.Thread(
                target=_notify_after, args=(manager, queued), daemon=True
            ).start()


def _ending_on_keyboard_interrupt() -> bool:
    """Whether the interpreter is exiting because of an unhandled Ctrl-C.

    Python prints an unhandled exception, storing it as ``sys.last_exc``
    (``sys.last_value`` before 3.12), before it runs the interpreter-exit
    hooks.
    """
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)


def _notify_after(manager: threading.Thread, queued: list[Future[Any]]) -> None:
    manager.join()
    notify_cancelled(queued)
