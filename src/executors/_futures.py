"""Where every future the project hands out is settled.

Every backend returns :class:`Future`, a :class:`concurrent.futures.Future`
in every way (``isinstance``, ``wait``, ``as_completed``,
``asyncio.wrap_future``), and sets its outcome through :func:`settle` and
nothing else. That one place keeps three promises the stdlib's own futures
break when user code misbehaves:

* **An exception always raises.** The stdlib's ``result()`` tests
  ``if self._exception:``, so an exception whose ``bool()`` is false (one
  that subclasses an empty container) makes ``result()`` return ``None``.
* **A callback cannot take a pool down.** The stdlib runs done-callbacks in
  the thread that settles the future and catches only ``Exception``: a
  callback raising ``SystemExit`` (``f.add_done_callback(lambda f:
  f.exception() and sys.exit(1))``) escapes into the pool's own thread,
  kills it, and leaves every other future pending and ``shutdown()`` hung.
  Here every ``BaseException`` a callback raises is logged and dropped.
* **A callback never runs in a thread the pool needs.** A future settled by
  :func:`settle` (always from a pool's thread: a manager, a library's result
  handler) runs its callbacks on one callback thread instead. A callback
  that waits on another future of the same executor then waits for a
  thread that is free to settle it, rather than deadlocking it.

Callbacks added to a future that is already done run at once, in the
caller's thread, as in the stdlib.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any, TypeVar

__all__ = [
    "Future",
    "add_internal_callback",
    "drain_callbacks",
    "fail_futures",
    "notify_cancelled",
    "settle",
]

T = TypeVar("T")

# The stdlib's logger and message for a failing callback, so that logging
# set up for the stdlib pools catches ours too.
_LOGGER = logging.getLogger("concurrent.futures")

_Callback = Callable[["futures.Future[Any]"], object]


class Future(futures.Future[T]):
    """A :class:`concurrent.futures.Future` whose exception always raises.

    Created by the backends; users get it from ``submit`` and ``map`` and
    treat it as the stdlib's.
    """

    # Set by the stdlib's __init__; typeshed does not declare them.
    _done_callbacks: list[_Callback]
    _exception: BaseException | None
    _condition: threading.Condition
    _state: str
    # The project's own callbacks (map's bookkeeping): quick, never block,
    # and run in the settling thread before the users' callbacks.
    _internal_callbacks: list[_Callback] | None = None

    def result(self, timeout: float | None = None) -> T:
        value = super().result(timeout)
        # The stdlib returned None for a falsy exception; raise it.
        error = self._exception
        if error is not None:
            try:
                raise error
            finally:
                error = None
        return value

    def add_done_callback(self, fn: _Callback) -> None:
        with self._condition:
            if self._state not in _DONE_STATES:
                self._done_callbacks.append(fn)
                return
        # Already done: run it now, in the caller's thread, as the stdlib
        # does, but what it raises is logged, as from any other thread.
        _run_callbacks(self, [fn])

    def _invoke_callbacks(self) -> None:
        internal = self._internal_callbacks
        if internal:
            self._internal_callbacks = None
            _run_callbacks(self, internal)
        callbacks: list[_Callback] = self._done_callbacks
        if not callbacks:
            return
        # Settled futures keep no reference to their callbacks (closures
        # that may hold large objects).
        self._done_callbacks = []
        if getattr(_settling, "active", False):
            _runner.put(self, callbacks)
        else:
            _run_callbacks(self, callbacks)


_DONE_STATES = frozenset({"CANCELLED", "CANCELLED_AND_NOTIFIED", "FINISHED"})


def add_internal_callback(future: futures.Future[Any], fn: _Callback) -> None:
    """Add one of the project's own done-callbacks to ``future``.

    It runs in the thread that settles the future, at once, unlike a user's
    callback: it must be quick and must not block (it only records).
    """
    if isinstance(future, Future):
        with future._condition:
            if future._state not in _DONE_STATES:
                if future._internal_callbacks is None:
                    future._internal_callbacks = []
                future._internal_callbacks.append(fn)
                return
        _run_callbacks(future, [fn])
    else:
        future.add_done_callback(fn)


def _run_callbacks(future: futures.Future[Any], callbacks: list[_Callback]) -> None:
    for callback in callbacks:
        try:
            callback(future)
        except BaseException:
            # SystemExit and KeyboardInterrupt too: the thread that runs
            # callbacks must survive them, or the futures behind it hang.
            _LOGGER.exception("exception calling callback for %r", future)


class _CallbackRunner:
    """One daemon thread that runs the callbacks of settled futures, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Any, list[_Callback]] | None] = (
            queue.SimpleQueue()
        )
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def put(self, future: futures.Future[Any], callbacks: list[_Callback]) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="executors-callbacks", daemon=True
                )
                self._thread.start()
        self._jobs.put((future, callbacks))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:  # pragma: no cover - never sent; kept for clarity
                return
            _run_callbacks(*job)
            job = None  # no reference to the future while idle
            with self._lock:
                self._pending -= 1
                if not self._pending:
                    self._idle.notify_all()

    def drain(self, timeout: float | None) -> bool:
        """Wait until every queued callback has run; False on timeout."""
        if self._thread is threading.current_thread():
            return False  # a callback shutting an executor down
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def after_fork(self) -> None:
        # The thread did not survive the fork; neither do its jobs.
        self.__init__()  # type: ignore[misc]


_runner = _CallbackRunner()
_settling = threading.local()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_runner.after_fork)


def drain_callbacks(timeout: float | None = None) -> bool:
    """Block until the callbacks of every settled future have run.

    Args:
        timeout: Seconds to wait at most; ``None`` waits for good.

    Returns:
        False if callbacks were still running when the time ran out.
    """
    return _runner.drain(timeout)


def settle(
    future: futures.Future[Any],
    value: Any = None,
    error: BaseException | None = None,
) -> bool:
    """Set a future's outcome; the one way every backend finishes a future.

    Safe from any thread: the future's callbacks run on the callback thread
    (see the module docstring), and nothing they raise reaches the caller.

    Args:
        future: The future to settle; one already done is left alone.
        value: The result, when ``error`` is ``None``.
        error: The exception to set instead of a result.

    Returns:
        True if this call settled the future, False if it was already done
        (cancelled, or failed by a broken pool).
    """
    previous = getattr(_settling, "active", False)
    _settling.active = True
    try:
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
    except futures.InvalidStateError:
        return False
    except BaseException:
        # A plain stdlib future (a plugin's) ran a callback that raised
        # SystemExit: the settling thread must live on.
        _LOGGER.exception("exception calling callback for %r", future)
    finally:
        _settling.active = previous
    return True


def fail_futures(
    futures_: Iterable[futures.Future[Any]], make_error: Callable[[], BaseException]
) -> None:
    """Fail every future that is not done yet, each with its own exception.

    Each future gets a fresh instance from ``make_error``: exceptions carry
    tracebacks, and one instance raised from many threads would pile their
    frames onto a single shared traceback.

    Args:
        futures_: The futures to fail; finished or cancelled ones are skipped.
        make_error: Called once per future to build its exception.
    """
    for fut in futures_:
        if not fut.done():
            settle(fut, error=make_error())


def notify_cancelled(futures_: Iterable[futures.Future[Any]]) -> None:
    """Wake ``wait()`` and ``as_completed()`` for futures a pool cancelled.

    ``Future.cancel()`` wakes ``result()`` but not the waiters of
    ``concurrent.futures.wait`` and ``as_completed``: those learn of a
    cancellation only from ``set_running_or_notify_cancel()``, which a pool
    calls when it dequeues the task. A pool that never dequeues what
    ``shutdown(cancel_futures=True)`` cancelled would leave those waits hung
    for good (CPython gh-109934, gh-87893).

    Call it only on futures the pool will never touch again: the stdlib
    logs and raises if a future is notified twice.

    Args:
        futures_: Futures of work the pool has dropped; others are skipped.
    """
    for fut in futures_:
        # The condition's lock is reentrant: checking and notifying under it
        # keeps two threads from notifying the same future.
        with fut._condition:
            if fut._state == "CANCELLED":
                fut.set_running_or_notify_cancel()
