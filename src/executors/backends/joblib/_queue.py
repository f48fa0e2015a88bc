"""The executor's call queue: how much it hands over, and its afterlife.

:class:`Window` sizes the queue's window; :class:`Abandoned` finishes the
work of an executor garbage-collected without ``shutdown()``.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import weakref
from concurrent.futures import Future
from typing import Any, ClassVar

from ..._callqueue import CallQueue
from ..._futures import add_internal_callback
from ..._lifecycle import close_at_exit
from ._pools import Workers

__all__ = ["Abandoned", "Window", "close_abandoned", "start_reaper"]

# Calls handed to the workers at once, per worker, plus one. Two per worker
# keep a worker busy on tiny tasks (one running, one waiting in its queue);
# every call beyond that stays in the call queue, where cancel() works.
HANDED_OVER_PER_WORKER = 2


class Window:
    """How many calls the workers get at once: fewer while any call is timed.

    A task's timeout counts from its launch, and loky reports no start: a
    timed call is therefore launched only when a worker is free, so that it
    does not spend its time limit waiting behind other tasks.
    """

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._lock = threading.Lock()
        self._timed = 0

    def __call__(self) -> int:
        if self._timed:
            return self._workers
        return HANDED_OVER_PER_WORKER * self._workers + 1

    def track(self, future: Future[Any]) -> None:
        """Count ``future`` as timed until it is done."""
        with self._lock:
            self._timed += 1
        add_internal_callback(future, self._done)

    def _done(self, _: Future[Any]) -> None:
        with self._lock:
            self._timed -= 1


class Abandoned:
    """The work of an executor dropped without ``shutdown()``, still pending.

    Made with the executor and registered for the interpreter-exit hook at
    once; it acts only once the executor is garbage-collected: it closes
    the call queue, stays alive until the work has drained, and finishes
    it at interpreter exit like a live executor's, as the stdlib pools do.

    Args:
        owner: The executor (held weakly).
        calls: Its call queue.
        workers: Its workers.
    """

    pending: ClassVar[set[Abandoned]] = set()

    def __init__(self, owner: object, calls: CallQueue, workers: Workers) -> None:
        self._owner = weakref.ref(owner)
        self.calls = calls
        self.workers = workers
        self._closed = False
        self._lock = threading.Lock()
        close_at_exit(self)

    def close(self) -> None:
        """Close the queue of the collected executor (never in a finalizer)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        Abandoned.pending.add(self)
        self.workers.after_release = functools.partial(Abandoned.pending.discard, self)
        self.calls.close()
        if self.calls.is_idle():
            # Drained already (maybe shut down long ago): nothing to keep.
            Abandoned.pending.discard(self)

    def close_at_exit(self) -> None:
        if self._owner() is not None:
            return  # the executor finishes its own work
        # The reaper may not have come to it yet.
        self.close()
        self.calls.wait_idle()
        self.workers.wait()


# Executors garbage-collected without shutdown(), for the reaper thread:
# SimpleQueue.put is safe in a finalizer, which may run in any thread at
# any allocation.
_reaper_jobs: queue.SimpleQueue[Abandoned] = queue.SimpleQueue()
_reaper: threading.Thread | None = None
_reaper_lock = threading.Lock()


def _reap() -> None:
    while True:
        leftover = _reaper_jobs.get()
        leftover.close()
        del leftover


def start_reaper() -> None:
    global _reaper
    with _reaper_lock:
        # Not alive after a fork: the child needs its own.
        if _reaper is None or not _reaper.is_alive():
            _reaper = threading.Thread(
                target=_reap, name="executors-joblib-reaper", daemon=True
            )
            _reaper.start()


def close_abandoned(leftover: Abandoned, pid: int) -> None:
    if os.getpid() == pid:
        _reaper_jobs.put(leftover)
