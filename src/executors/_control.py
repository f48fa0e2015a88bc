"""Task control: timeouts and retries, set once and honoured by every backend.

A user sets them for every task at ``create()`` (``task_timeout=``,
``retries=``, ``retry_on=``, ``retry_delay=``) or for one ``submit`` or
``map`` by wrapping the callable::

    ex.submit(with_options(fetch, timeout=5, retries=2), url)

The rules, the same on every backend:

* **Timeout.** The clock starts when the task is handed to a worker (for
  a backend on a :class:`~executors._callqueue.CallQueue` whose window is
  its worker slots, that is when a worker takes it) and stops when the
  task's function returns. Past the limit the future fails with
  :class:`~executors._errors.TaskTimeoutError`; the backend stops the task
  if it can (``capabilities.stops_timed_out_tasks``), else the task is
  abandoned and runs on. In a ``map`` the limit is per item: a map with a
  timeout runs one item per task.
* **Retries.** ``retries=N`` allows N more attempts. By default an attempt
  is spent only when the worker died under the task (on backends that
  survive worker death); exceptions listed in ``retry_on`` are retried too.
  ``retry_delay`` seconds pass between attempts. Each attempt is a fresh
  run in a worker; the future resolves once, with the last outcome, and a
  final exception carries ``attempts`` (and, on Python 3.11+, a note).
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import astuple, dataclass
from typing import Any, Generic, TypeVar

from ._options import check_seconds

__all__ = [
    "OPTION_NAMES",
    "TaskOptions",
    "TimeLimited",
    "Timer",
    "WithOptions",
    "check_task_options",
    "record_attempts",
    "split_options",
    "submitting",
    "submitting_options",
    "timer",
    "unwrap_options",
    "with_options",
    "with_timeout",
]

T = TypeVar("T")

#: The names ``create()`` accepts on every backend.
OPTION_NAMES: tuple[str, str, str, str] = (
    "task_timeout",
    "retries",
    "retry_on",
    "retry_delay",
)


@dataclass(frozen=True)
class TaskOptions:
    """How tasks are controlled; ``None`` means "not set here".

    Attributes:
        timeout: Seconds a task may run.
        retries: Further attempts allowed after the first.
        retry_on: Exception types that earn a retry (beyond a dead worker).
        retry_delay: Seconds between attempts.
    """

    timeout: float | None = None
    retries: int | None = None
    retry_on: tuple[type[BaseException], ...] | None = None
    retry_delay: float | None = None

    def over(self, base: TaskOptions | None) -> TaskOptions:
        """These options, with ``base`` filling what is not set here."""
        if base is None:
            return self
        return TaskOptions(
            *(
                mine if mine is not None else theirs
                for mine, theirs in zip(astuple(self), astuple(base), strict=True)
            )
        )

    @property
    def is_default(self) -> bool:
        return not self.timeout and not self.retries

    def retryable(self, error: BaseException, attempts: int, *, crashed: bool) -> bool:
        """Whether a task that failed on its ``attempts``-th try runs again."""
        if attempts > (self.retries or 0):
            return False
        return crashed or isinstance(error, self.retry_on or ())

    @property
    def delay(self) -> float:
        return self.retry_delay or 0.0


def _number(value: object, name: str, *, positive: bool) -> float:
    seconds = check_seconds(value, name, positive=positive, optional=False)
    assert seconds is not None  # not optional
    return seconds


def check_task_options(
    *,
    timeout: object = None,
    retries: object = None,
    retry_on: object = None,
    retry_delay: object = None,
    names: tuple[str, str, str, str] = OPTION_NAMES,
) -> TaskOptions:
    """Validate task options; errors name the option as the user spelled it."""
    timeout_name, retries_name, retry_on_name, delay_name = names
    checked_timeout = (
        None if timeout is None else _number(timeout, timeout_name, positive=True)
    )
    if retries is not None:
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise TypeError(f"{retries_name} must be an int, got {retries!r}")
        if retries < 0:
            raise ValueError(f"{retries_name} must be >= 0, got {retries!r}")
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if retry_on is not None and (
        not isinstance(retry_on, tuple)
        or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        )
    ):
        raise TypeError(
            f"{retry_on_name} must be an exception type or a tuple of them, "
            f"got {retry_on!r}"
        )
    delay = (
        None
        if retry_delay is None
        else _number(retry_delay, delay_name, positive=False)
    )
    return TaskOptions(checked_timeout, retries, retry_on, delay)


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], TaskOptions | None]:
    """Take the task-control options out of ``create()``'s keyword options."""
    control = {name: options.pop(name) for name in OPTION_NAMES if name in options}
    if not control:
        return options, None
    return options, check_task_options(
        timeout=control.get("task_timeout"),
        retries=control.get("retries"),
        retry_on=control.get("retry_on"),
        retry_delay=control.get("retry_delay"),
    )


_submitting: contextvars.ContextVar[TaskOptions | None] = contextvars.ContextVar(
    "executors_submitting", default=None
)


class submitting:
    """Make ``options`` the task options of the calls submitted inside.

    ``BaseExecutor`` wraps each submission in it, and
    :meth:`executors.backend.CallQueue.submit` reads it: the hooks between them
    (``_submit``, ``_submit_chunk``) keep their signatures. A class rather
    than a generator context manager: it runs once per ``submit``, and this
    form costs a third as much.
    """

    __slots__ = ("_options", "_token")

    def __init__(self, options: TaskOptions | None) -> None:
        self._options = options

    def __enter__(self) -> None:
        self._token = _submitting.set(self._options)

    def __exit__(self, *exc_info: object) -> None:
        _submitting.reset(self._token)


def submitting_options() -> TaskOptions | None:
    """The task options of the submission in progress in this context."""
    return _submitting.get()


class WithOptions(Generic[T]):
    """A callable carrying task options for one ``submit`` or ``map``.

    Made by :func:`with_options`. Called directly, it just calls the
    wrapped function.

    Attributes:
        fn: The wrapped callable.
        options: The options it carries.
    """

    __slots__ = ("fn", "options")

    def __init__(self, fn: Callable[..., T], options: TaskOptions) -> None:
        self.fn = fn
        self.options = options

    def __call__(self, /, *args: Any, **kwargs: Any) -> T:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return WithOptions, (self.fn, self.options)

    def __repr__(self) -> str:
        given = ", ".join(
            f"{name}={value!r}"
            for name, value in zip(
                ("timeout", "retries", "retry_on", "retry_delay"),
                astuple(self.options),
                strict=True,
            )
            if value is not None
        )
        return f"with_options({self.fn!r}, {given})"


def with_options(
    fn: Callable[..., T],
    *,
    timeout: float | None = None,
    retries: int | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    retry_delay: float | None = None,
) -> WithOptions[T]:
    """Give one ``submit`` or ``map`` its own timeout and retries.

    Options left out (or ``None``) keep the executor's, set at ``create()``.

    Args:
        fn: The callable to run.
        timeout: Seconds each call (each item of a map) may run.
        retries: Further attempts after the first.
        retry_on: Exception types that are retried (a dead worker always
            is, where the backend survives worker death).
        retry_delay: Seconds between attempts.

    Raises:
        TypeError: ``fn`` is not callable, or an option has a wrong type.
        ValueError: an option is out of range.
    """
    if not callable(fn):
        raise TypeError(f"with_options: fn must be callable, got {fn!r:.80}")
    options = check_task_options(
        timeout=timeout,
        retries=retries,
        retry_on=retry_on,
        retry_delay=retry_delay,
        names=(
            "with_options: timeout",
            "with_options: retries",
            "with_options: retry_on",
            "with_options: retry_delay",
        ),
    )
    if isinstance(fn, WithOptions):
        return WithOptions(fn.fn, options.over(fn.options))
    return WithOptions(fn, options)


# The queue backend's per-call timeout, from before with_options; it works
# on every backend with task control, and is imported from the queue's
# package only.


class TimeLimited(WithOptions[T]):
    """What :func:`with_timeout` returns: a :class:`~executors.WithOptions`.

    Deprecated with :func:`with_timeout`. Every backend with
    ``capabilities.task_control`` honours it as ``with_options(fn,
    timeout=seconds)``; called directly, it just calls the wrapped function.

    Attributes:
        fn: The wrapped callable.
        seconds: The limit for one call.
    """

    __slots__ = ()

    def __init__(self, fn: Callable[..., T], seconds: float) -> None:
        super().__init__(fn, TaskOptions(timeout=seconds))

    @property
    def seconds(self) -> float:
        timeout = self.options.timeout
        return 0.0 if timeout is None else timeout  # never None: see __init__

    def __repr__(self) -> str:
        return f"with_timeout({self.fn!r}, {self.seconds!r})"


def with_timeout(fn: Callable[..., T], seconds: float) -> TimeLimited[T]:
    """Deprecated: ``executors.with_options(fn, timeout=seconds)``.

    ``executor.submit(with_timeout(fn, 2.0), x)`` runs ``fn(x)`` with a
    2-second limit, overriding the executor's ``task_timeout``; in
    ``executor.map(with_timeout(fn, 2.0), items)`` each item gets 2 seconds.
    A call that runs longer is stopped by replacing its worker process, and
    its future raises :class:`~executors.TaskTimeoutError` (a
    :class:`TimeoutError`).

    Args:
        fn: The callable to limit.
        seconds: The limit, greater than 0.

    Raises:
        TypeError: ``fn`` is not callable or ``seconds`` not a number.
        ValueError: ``seconds`` is not greater than 0.
    """
    warnings.warn(
        "executors.backends.queue.with_timeout(fn, seconds) is deprecated; "
        "use executors.with_options(fn, timeout=seconds)",
        DeprecationWarning,
        stacklevel=2,
    )
    if not callable(fn):
        raise TypeError(f"with_timeout: fn must be callable, got {fn!r:.80}")
    checked = check_seconds(
        seconds, "with_timeout: seconds", positive=True, optional=False
    )
    return TimeLimited(fn, checked or 0.0)


def unwrap_options(fn: Callable[..., T]) -> tuple[Callable[..., T], TaskOptions | None]:
    """Split a :class:`WithOptions` into its callable and its options."""
    if isinstance(fn, WithOptions):
        return fn.fn, fn.options
    return fn, None


def record_attempts(error: BaseException, attempts: int) -> BaseException:
    """Note on a task's final exception how many attempts were made."""
    if attempts <= 1:
        return error
    # AttributeError, TypeError: an exception type with __slots__.
    with contextlib.suppress(AttributeError, TypeError):
        error.attempts = attempts  # type: ignore[attr-defined]
    add_note = getattr(error, "add_note", None)
    if add_note is not None:
        add_note(f"(failed after {attempts} attempts)")
    return error


class Timer:
    """One daemon thread that runs callbacks at deadlines (timeouts, delays).

    ``call_at`` returns a handle whose ``cancel()`` drops the callback; a
    callback runs outside the timer's lock and must be quick.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, _Entry]] = []
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, seconds: float, fn: Callable[[], object]) -> _Entry:
        entry = _Entry(fn)
        with self._lock:
            deadline = time.monotonic() + seconds
            heapq.heappush(self._heap, (deadline, next(self._ids), entry))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="executors-timer", daemon=True
                )
                self._thread.start()
            if self._heap[0][2] is entry:
                self._wake.notify()
        return entry

    def _run(self) -> None:
        while True:
            with self._lock:
                while True:
                    while self._heap and self._heap[0][2].fn is None:
                        heapq.heappop(self._heap)  # cancelled
                    if not self._heap:
                        self._wake.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        entry = heapq.heappop(self._heap)[2]
                        break
                    self._wake.wait(delay)
            fn, entry.fn = entry.fn, None
            if fn is not None:
                try:
                    fn()
                except BaseException:  # pragma: no cover - callbacks are ours
                    import logging

                    logging.getLogger("executors").exception("timer callback failed")

    def after_fork(self) -> None:
        """Forget the parent's thread and deadlines: a forked child has neither
        the thread nor the tasks whose deadlines the heap holds."""
        self.__init__()  # type: ignore[misc]


class _Entry:
    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn: Callable[[], object] | None = fn

    def cancel(self) -> None:
        self.fn = None


timer = Timer()

if hasattr(os, "register_at_fork"):
    # Without it a child forked while the parent's timer thread runs keeps
    # the "started" mark, so its own deadlines would never fire.
    os.register_at_fork(after_in_child=timer.after_fork)
