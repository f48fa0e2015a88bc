"""``AsyncResult``, and a task's outcome in ``multiprocessing.Pool``'s terms.

A future's value or exception becomes what the stdlib's Pool would return
or raise (:func:`result_or_error`, :func:`stdlib_error`); an
:class:`AsyncResult` is filled from it by a done callback, on the thread
:func:`call_when_done` picks.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._futures import add_internal_callback
from .._remote import RemoteTraceback

if TYPE_CHECKING:
    # typeshed does not declare it.
    class MaybeEncodingError(Exception):
        exc: str
        value: str

        def __init__(self, exc: object, value: object) -> None: ...

else:
    from multiprocessing.pool import MaybeEncodingError

__all__ = [
    "AsyncResult",
    "MaybeEncodingError",
    "call_when_done",
    "result_or_error",
    "stdlib_error",
]

T = TypeVar("T")

# The logger docs/coming-from-pool.md names, whichever module logs.
log = logging.getLogger("executors.pool")


class AsyncResult(Generic[T]):
    """What the ``*_async`` methods return: ``multiprocessing.pool.AsyncResult``.

    ``callback`` or ``error_callback`` runs once, before the result becomes
    ready, in the thread that completes it (a backend's thread, or the
    caller's on ``inline``): keep it short, as with the stdlib. An exception
    raised by a callback is logged, never lost in a thread.
    """

    def __init__(
        self,
        callback: Callable[[T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        self._success = False
        self._value: Any = None

    @property
    def _has_callbacks(self) -> bool:
        return self._callback is not None or self._error_callback is not None

    def ready(self) -> bool:
        """Return whether the call has completed."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Return whether the call completed without raising.

        Raises:
            ValueError: The result is not ready yet (as the stdlib).
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready, or ``timeout`` seconds pass."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> T:
        """Return the result when it arrives; raise the call's exception.

        Args:
            timeout: Seconds to wait; ``None`` waits until the result is
                ready, which always happens: a dead worker or a
                ``terminate()`` fails the call instead of leaving it pending.

        Raises:
            multiprocessing.TimeoutError: Not ready within ``timeout``.
            concurrent.futures.BrokenExecutor: The worker running the call
                died (the stdlib would wait forever).
            concurrent.futures.CancelledError: ``terminate()`` dropped the
                call before it ran.
        """
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value  # type: ignore[no-any-return]
        raise self._value

    def __repr__(self) -> str:
        if not self.ready():
            state = "pending"
        else:
            state = "successful" if self._success else "failed"
        return f"<{type(self).__name__} {state}>"

    def _set(self, success: bool, value: Any) -> None:
        self._success = success
        self._value = value
        callback = self._callback if success else self._error_callback
        try:
            if callback is not None:
                callback(value)
        except Exception:
            log.exception("exception in the callback of %r", self)
        finally:
            # Ready only after the callback: get() returning means it ran,
            # as with the stdlib.
            self._event.set()

    def _set_from_future(self, future: Future[Any]) -> None:
        self._set(*result_or_error(future))

    def _set_from_values(self, values: Iterator[Any]) -> None:
        """Read a map's iterator to its end: its list, or its first error."""
        try:
            collected = list(values)
        except BaseException as exc:
            self._set(False, stdlib_error(exc))
        else:
            self._set(True, collected)


def result_or_error(future: Future[Any]) -> tuple[bool, Any]:
    """Wait for ``future``; ``(True, value)``, or ``(False, error)`` as Pool's."""
    try:
        return True, future.result()
    except BaseException as exc:
        if not future.done():
            raise  # interrupted while waiting (Ctrl-C): not the task's error
        if future.cancelled():
            return False, CancelledError("the pool was terminated before it ran")
        return False, stdlib_error(exc)


def call_when_done(
    has_callbacks: bool, future: Future[Any], fn: Callable[[Future[Any]], None]
) -> None:
    """Call ``fn(future)`` once ``future`` is done, in the right thread.

    A result with a user callback is finished on the thread that runs the
    futures' callbacks: the callback may take its time. One without is
    finished at once, in the thread that settles the future: it only stores
    the outcome, and it must not wait for that callback thread, which may
    be running a callback that waits for this very result.
    """
    if has_callbacks:
        future.add_done_callback(fn)
    else:
        add_internal_callback(future, fn)


def stdlib_error(error: BaseException) -> BaseException:
    """``error`` as ``multiprocessing.Pool`` would raise it.

    A result the worker could not pickle is the pickler's exception at the
    executor level; Pool code catches ``MaybeEncodingError`` for it, with
    the stdlib's message and attributes (``exc`` and ``value``, reprs).
    """
    cause = error.__cause__
    if not isinstance(cause, RemoteTraceback) or cause.unsent_result is None:
        return error
    wrapped = MaybeEncodingError(error, None)
    # The stdlib's value is repr(result), which only the worker could take.
    wrapped.value = cause.unsent_result
    wrapped.args = (wrapped.exc, wrapped.value)
    wrapped.__cause__ = error
    return wrapped
