"""The queue pool's :class:`~executors._callqueue.CallQueue`, with two gaps filled.

The pool uses the shared call queue as every backend does (queueing, exact
cancel, timeouts, retries, ``kill_task``); this subclass adds only what the
shared one lacks today, and each part should move into ``CallQueue``:

* **Room by call.** The pool decides per call whether a worker can take it
  now (send-ahead depends on the call's size and on each worker's pipe; a
  call with a timeout goes only to an idle worker, so that its clock
  measures its run): ``room(call)``. A plain ``window`` cannot say that.
  Where no worker can take the head call, ``room`` also learns how many
  calls wait, to start workers for them (``waiting``).
* **A task's clock is its run.** The shared queue times a call from its
  launch; here, when that time is up, the pool is asked how long the task
  has actually run (``run_left(call, timeout)``, from the board), and the
  deadline moves to the task's start: waiting in a worker's pipe,
  unpickling its arguments and sending its result do not count.
* **Ctrl-C while launching** must reach the caller: ``CallQueue`` fails
  the call with any exception its launch raises, ``KeyboardInterrupt``
  included, and swallows it. The pool sets it aside instead and the
  executor raises it once its submit is done (``Pool.raise_deferred``).
* **Calls waiting out a retry delay** are stoppable: ``kill_task`` finds
  them (their future is running), and ``fail_launched`` and ``break_`` fail
  them at once instead of when their delay ends (``terminate_workers()``
  with a 30 s ``retry_delay`` pending returned only after 30 s).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..._callqueue import Call, CallQueue
from ..._control import timer
from ..._futures import settle

__all__ = ["PoolCalls"]


class PoolCalls(CallQueue):
    """A :class:`CallQueue` whose window is the pool's ``room(call, waiting)``."""

    def __init__(
        self,
        room: Callable[[Call, int], bool],
        run_left: Callable[[Call, float], float | None],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._room = room
        self._run_left = run_left
        # Calls waiting out their retry delay, with their timer entries.
        self._waiting: dict[Call, Any] = {}

    def _limit(self, call: Call) -> int:
        # Under the queue's lock, as CallQueue reads its window.
        return sys.maxsize if self._room(call, len(self._queued)) else 0

    def _expire(self, call: Call, timeout: float) -> None:
        left = self._run_left(call, timeout)
        if left is None:
            return  # it has returned: its outcome is on its way
        if left > 0:
            # Started after its launch: the rest of its time, from its start.
            call.deadline = timer.call_later(
                left, functools.partial(self._expire, call, timeout)
            )
            return
        super()._expire(call, timeout)

    def _retry(self, call: Call) -> None:
        again = call.again()
        delay = call.options.delay if call.options is not None else 0.0
        if delay <= 0:
            self._requeue(again)
            return
        with self._lock:
            self._waiting[again] = timer.call_later(
                delay, functools.partial(self._delay_over, again)
            )

    def _delay_over(self, call: Call) -> None:
        with self._lock:
            if self._waiting.pop(call, None) is None:
                return  # stopped, or failed, while it waited
        self._requeue(call)

    def _take_waiting(self, call: Call | None = None) -> list[Call]:
        with self._lock:
            if call is None:
                calls = list(self._waiting)
            elif call in self._waiting:
                calls = [call]
            else:
                return []
            for each in calls:
                self._waiting.pop(each).cancel()
            self._delayed -= len(calls)
        return calls

    def find(self, future: Future[Any]) -> Call | None:
        found = super().find(future)
        if found is None:
            with self._lock:
                found = next((c for c in self._waiting if c.future is future), None)
        return found

    def stop(self, call: Call) -> bool:
        with self._lock:
            if call in self._waiting:
                return True  # settle() takes it out of its wait
        return super().stop(call)

    def settle(
        self,
        call: Call,
        value: Any = None,
        error: BaseException | None = None,
        *,
        retry: bool = True,
        release: bool = True,
    ) -> bool:
        if self._waiting and self._take_waiting(call):
            # kill_task() of a call waiting out its retry delay.
            call.payload = None
            settle(call.future, value, error)
            self._check_idle()
            return True
        return super().settle(call, value, error, retry=retry, release=release)

    def fail_launched(self, make_error: Callable[[], BaseException]) -> None:
        self._fail_waiting(make_error)
        super().fail_launched(make_error)

    def break_(self, make_error: Callable[[], BaseException]) -> list[Call]:
        launched = super().break_(make_error)
        self._fail_waiting(make_error)
        return launched

    def _fail_waiting(self, make_error: Callable[[], BaseException]) -> None:
        for call in self._take_waiting():
            call.payload = None
            settle(call.future, error=make_error())
        self._check_idle()
