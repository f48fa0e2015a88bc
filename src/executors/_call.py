"""A call on its way through a :class:`~executors._callqueue.CallQueue`."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ._control import TaskOptions
from ._errors import ExecutorFailedError

__all__ = ["Call", "Window", "dropped_by_library"]


class Call:
    """One submitted call on its way through a :class:`CallQueue`.

    Attributes:
        future: The future handed to the user.
        payload: What ``launch`` needs to run the call. The queue drops it
            once the call has settled, so the executor keeps no reference
            to a finished task's callable or arguments.
        chunk: True for a chunk of a ``map`` (it may have its own window).
        handle: The backend's own note about the launched call (the
            library's future, a key); dropped when the call settles.
        options: The task's timeout and retries, if any.
        attempts: How many times it has been launched.
    """

    __slots__ = (
        "attempts",
        "chunk",
        "deadline",
        "future",
        "handle",
        "options",
        "payload",
    )

    def __init__(
        self,
        future: Future[Any],
        payload: Any,
        chunk: bool,
        options: TaskOptions | None = None,
        attempts: int = 0,
    ) -> None:
        self.future = future
        self.payload = payload
        self.chunk = chunk
        self.handle: Any = None
        self.options = options
        self.attempts = attempts
        self.deadline: Any = None

    def again(self) -> Call:
        """The next attempt: a new call for the same future and payload.

        A new object, so that a late outcome of the earlier attempt (a
        task abandoned at its timeout) can never settle this one. A payload
        with a ``for_another_attempt()`` method (a message whose arguments
        are in shared memory, where an attempt may have written into them)
        gives the new attempt what that returns.
        """
        payload = self.payload
        renew = getattr(payload, "for_another_attempt", None)
        if renew is not None:
            payload = renew()
        return Call(self.future, payload, self.chunk, self.options, self.attempts)

    def __repr__(self) -> str:
        return f"<Call chunk={self.chunk} future={self.future!r}>"


#: A window: a number of calls, or a callable read before each launch.
Window = int | Callable[[], int]


def dropped_by_library() -> BaseException:
    return ExecutorFailedError(
        "the library behind this executor cancelled a task it had already "
        "accepted; the executor is shutting down or broken"
    )
