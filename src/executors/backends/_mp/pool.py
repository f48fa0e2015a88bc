"""The Pool that reports every worker it creates, and the record of them.

Caller side only. See :mod:`executors.backends._mp` for the whole picture.
"""

from __future__ import annotations

import contextlib
import multiprocessing.pool
import multiprocessing.util
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from ..._workers._pools import SparePoolMixin

__all__ = ["PoolWorkers", "WatchedPool", "WatchedPoolMixin"]


class _NotifyOnceClosed:
    """Pool's "the cache is empty" notice, passed on only once Pool is closing.

    Pool's task cache wakes the worker handler each time it empties: after
    every task of a ``submit(...).result()`` loop. The handler then polls
    every worker's exit and competes for the GIL with the very threads that
    carry the result. It needs the notice only to stop once a closed pool
    has drained; ``close()`` and ``terminate()`` wake it themselves.
    """

    def __init__(self, pool: WatchedPoolMixin, notifier: Any) -> None:
        self._pool = pool
        self._notifier = notifier

    def put(self, obj: object) -> None:
        if self._pool._state != multiprocessing.pool.RUN:
            self._notifier.put(obj)


if TYPE_CHECKING:
    _PoolBase = multiprocessing.pool.Pool
else:
    _PoolBase = object


class WatchedPoolMixin(_PoolBase):
    """Makes a Pool (or a Pool subclass) report every worker it creates.

    Put it first in the bases: ``class P(WatchedPoolMixin, MemmappingPool)``.

    Args:
        on_new_worker: Called with each worker process, replacements too,
            in the thread that creates it, before it starts (from
            :meth:`.watch.PoolWatch.pool_options`).
        *args: The Pool's arguments.
        **kwargs: The Pool's keyword arguments.
    """

    # Private attributes of Pool the watch reads (see the module docstring).
    _pool: list[BaseProcess]
    _state: str
    _worker_handler: threading.Thread
    _task_handler: threading.Thread
    _result_handler: threading.Thread
    _taskqueue: Any
    _inqueue: Any
    _outqueue: Any
    _change_notifier: Any
    _cache: Any  # a dict with a `notifier`
    _terminate: multiprocessing.util.Finalize

    def __init__(
        self, *args: Any, on_new_worker: Callable[[BaseProcess], None], **kwargs: Any
    ) -> None:
        self._on_new_worker = on_new_worker
        super().__init__(*args, **kwargs)
        self._cache.notifier = _NotifyOnceClosed(self, self._change_notifier)

    # Pool creates every worker (the first ones and each replacement, in its
    # worker handler thread) through this hook.
    def Process(self, ctx: Any, *args: Any, **kwds: Any) -> Any:  # type: ignore[override]
        process = ctx.Process(*args, **kwds)
        self._on_new_worker(process)
        return process

    # Pool's worker handler also wakes whenever a result waits in the
    # outqueue, and loops (polling every worker's exit) until the result
    # handler has read it: under a stream of results it spins, and its GIL
    # time starves the threads that move tasks and results (a map of tiny
    # tasks used twice the CPU in the caller). Worker exits wake it through
    # their sentinels and close/terminate through the change notifier, so
    # this drops only the spin, as ThreadPool does.
    def _get_sentinels(self) -> list[Any]:
        return [self._change_notifier._reader]

    @property
    def handler_threads(self) -> tuple[threading.Thread, ...]:
        """Pool's worker handler, task handler and result handler threads."""
        return (self._worker_handler, self._task_handler, self._result_handler)


class WatchedPool(SparePoolMixin, WatchedPoolMixin, multiprocessing.pool.Pool):
    """A :class:`multiprocessing.pool.Pool` that reports its workers."""


class PoolWorkers:
    """Every worker process Pool creates, handed over by Pool's own threads."""

    def __init__(self, on_new: Callable[[], None]) -> None:
        self._on_new = on_new
        self._lock = threading.Lock()
        self._new: list[BaseProcess] = []
        self._all: list[BaseProcess] = []  # created and not yet released

    def adopt(self, process: BaseProcess) -> None:
        with self._lock:
            self._new.append(process)
            self._all.append(process)
        self._on_new()

    def take_new(self) -> list[BaseProcess]:
        with self._lock:
            new, self._new = self._new, []
        return new

    def all(self) -> list[BaseProcess]:
        with self._lock:
            return list(self._all)

    def forget(self, process: BaseProcess) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._all.remove(process)
