"""A :class:`~executors._callqueue.CallQueue`'s task control, kept apart.

Timeouts, retries (with their delay) and stopping one call: the part of the
call queue that :mod:`executors._control`'s options drive. A mixin of
:class:`~executors._callqueue.CallQueue` only; it works on the queue's own
state, under the queue's lock, and is not used alone.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ._call import Call
from ._control import timer
from ._errors import TaskTimeoutError, WorkerCrashedError
from ._futures import fail_futures

__all__ = ["TaskControl"]

_log = logging.getLogger("executors")


class TaskControl:
    """Timeouts, retries and stopping one call, for :class:`CallQueue`."""

    # The queue's state this part reads and writes (set by CallQueue).
    _lock: threading.Lock
    _launched: set[Call]
    _queued: deque[Call]
    _waiting: dict[Call, Any]
    _delayed: int
    _broken: Callable[[], BaseException] | None
    _retries_crashes: bool
    _stop: Callable[[Call], bool] | None
    _run_left: Callable[[Call, float], float | None] | None

    # CallQueue's own methods this part calls (declared for the type checker).
    if TYPE_CHECKING:

        def settle(
            self,
            call: Call,
            value: Any = None,
            error: BaseException | None = None,
            *,
            retry: bool = True,
            release: bool = True,
        ) -> bool: ...

        def _pump(self, check_idle: bool = True) -> None: ...

        def _check_idle(self) -> None: ...

    def _retryable(self, call: Call, error: BaseException) -> bool:
        options = call.options
        if options is None or self._broken is not None:
            return False
        crashed = self._retries_crashes and isinstance(error, WorkerCrashedError)
        return options.retryable(error, call.attempts, crashed=crashed)

    def _retry(self, call: Call) -> None:
        again = call.again()
        delay = call.options.delay if call.options is not None else 0.0
        if delay > 0:
            with self._lock:
                self._delayed -= 1
                self._waiting[again] = timer.call_later(
                    delay, functools.partial(self._requeue, again, True)
                )
        else:
            self._requeue(again)

    def _requeue(self, call: Call, waited: bool = False) -> None:
        with self._lock:
            if waited:
                if self._waiting.pop(call, None) is None:
                    return  # stopped, or failed, while it waited
            else:
                self._delayed -= 1
            broken = self._broken
            if broken is None:
                # First in line: it was running already.
                self._queued.appendleft(call)
        if broken is not None:
            fail_futures([call.future], broken)
            self._check_idle()
            return
        self._pump()

    def _expire(self, call: Call, timeout: float) -> None:
        # In the timer thread: the task has run past its limit.
        with self._lock:
            if call not in self._launched:
                return
        if self._run_left is not None:
            left = self._run_left(call, timeout)
            if left is None:
                return  # it has returned: its outcome is on its way
            if left > 0:
                # Started after its launch: the rest of its time, from its start.
                call.deadline = timer.call_later(
                    left, functools.partial(self._expire, call, timeout)
                )
                return
        stopped = self.stop(call)
        verb = (
            "it was stopped and its worker replaced"
            if stopped
            else "this backend cannot stop it, so it was abandoned and runs on"
        )
        call.deadline = None
        self.settle(
            call,
            error=TaskTimeoutError.ran_past(timeout, verb),
            release=stopped,
        )

    def stop(self, call: Call) -> bool:
        """Ask the backend to stop a launched call's task; True if it did.

        A call waiting out a retry delay is stopped by the settle that
        follows (nothing runs it).
        """
        with self._lock:
            if call in self._waiting:
                return True
        if self._stop is None:
            return False
        try:
            return self._stop(call)
        except Exception:  # pragma: no cover - a backend bug
            _log.exception("executors: stopping a task failed")
            return False

    def find(self, future: Future[Any]) -> Call | None:
        """The launched call of ``future``, if it is with the library now."""
        with self._lock:
            for call in (*self._launched, *self._waiting):
                if call.future is future:
                    return call
        return None

    def _take_waiting_locked(self) -> list[Call]:
        waiting = list(self._waiting)
        for entry in self._waiting.values():
            entry.cancel()
        self._waiting.clear()
        return waiting
