"""Validation of the options shared by several backends.

Every check raises eagerly with a message a test can match, and never
``assert``s: a wrong option must fail at ``create()``, not in a worker.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.util
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT_START_METHOD",
    "ProcessPoolOptions",
    "check_buffersize",
    "check_choice",
    "check_chunksize",
    "check_initializer",
    "check_int",
    "check_map_arguments",
    "check_max_tasks_per_child",
    "check_max_workers",
    "check_process_pool_options",
    "check_timeout",
    "cpu_count",
    "protect_forkserver_socket",
    "resolve_mp_context",
    "start_method_of",
]

# forkserver on POSIX: forking a parent that runs threads (every executor
# runs a manager thread, and so do most programs that use one) can deadlock
# the child on a lock held by another thread. Python 3.14 made the same
# switch for the same reason. Spawn where there is no forkserver (Windows).
DEFAULT_START_METHOD = (
    "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
)


def protect_forkserver_socket(version: tuple[int, ...] | None = None) -> bool:
    """Keep the fork server off the abstract socket namespace (CVE-2022-42919).

    On Linux, Python 3.10.0 to 3.10.8 bind the fork server's listening
    socket in the abstract namespace, which has no permissions: any local
    user can connect to it and have the fork server run code as this user.
    3.10.9 (and 3.11) bind a file in a private ``0700`` directory instead;
    turning off ``multiprocessing.util.abstract_sockets_supported`` makes
    the older versions do the same (``connection.arbitrary_address`` reads
    it each time). The switch is process-wide, and also moves other
    ``AF_UNIX`` listeners of multiprocessing (managers) to the filesystem,
    as 3.10.9 did. It must run before the fork server starts: a fork server
    already started by the program keeps its socket.

    Args:
        version: ``(major, minor, micro)``; default: the running Python's.

    Returns:
        Whether the switch was turned off by this call.
    """
    if version is None:
        version = tuple(sys.version_info[:3])
    if not (3, 10, 0) <= version[:3] < (3, 10, 9):
        return False
    if not multiprocessing.util.abstract_sockets_supported:
        return False
    multiprocessing.util.abstract_sockets_supported = False  # type: ignore[misc]
    return True


def cpu_count() -> int:
    """The number of CPUs this process may use (at least 1)."""
    if sys.version_info >= (3, 13):
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def check_int(
    value: object,
    name: str,
    *,
    minimum: int,
    not_int: str | None = None,
    too_small: str | None = None,
) -> int | None:
    """Validate an optional integer option: ``None``, or an int >= ``minimum``.

    A ``bool`` is not taken for an int. ``not_int`` and ``too_small``
    replace the default messages where the stdlib has its own.

    Raises:
        TypeError: not an int (``"NAME must be an int or None, got ..."``).
        ValueError: below ``minimum`` (``"NAME must be >= MINIMUM"``).
    """
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(not_int or f"{name} must be an int or None, got {value!r}")
    if value < minimum:
        raise ValueError(too_small or f"{name} must be >= {minimum}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``.

    Raises:
        ValueError: ``"NAME must be one of 'a', 'b', got ..."``.
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    return value


def check_max_workers(value: object, *, default: int) -> int:
    """Return ``value`` as a worker count, ``default`` when it is ``None``.

    Raises:
        TypeError: ``value`` is not an int.
        ValueError: ``"max_workers must be greater than 0"``.
    """
    workers = check_int(
        value, "max_workers", minimum=1, too_small="max_workers must be greater than 0"
    )
    return default if workers is None else workers


def check_initializer(initializer: object, initargs: object) -> None:
    """Check ``initializer`` is callable (or None) and ``initargs`` a tuple.

    Raises:
        TypeError: naming the bad option.
    """
    if initializer is not None and not callable(initializer):
        raise TypeError(f"initializer must be callable or None, got {initializer!r}")
    if not isinstance(initargs, tuple):
        raise TypeError(f"initargs must be a tuple, got {type(initargs).__name__}")


def check_max_tasks_per_child(value: object) -> int | None:
    """Validate ``max_tasks_per_child`` (``None`` or an int >= 1).

    Raises:
        TypeError: not an int.
        ValueError: ``"max_tasks_per_child must be >= 1"``.
    """
    return check_int(value, "max_tasks_per_child", minimum=1)


def resolve_mp_context(value: object) -> multiprocessing.context.BaseContext:
    """Turn the ``mp_context`` option into a multiprocessing context.

    Args:
        value: ``None`` (the project's default, :data:`DEFAULT_START_METHOD`),
            a start method name (``"fork"``, ``"spawn"``, ``"forkserver"``)
            or a context from :func:`multiprocessing.get_context`.

    A forkserver context is made safe first (see
    :func:`protect_forkserver_socket`).

    Raises:
        ValueError: an unknown start method name.
        TypeError: anything else.
    """
    context = _context_of(value)
    if context.get_start_method() == "forkserver":
        protect_forkserver_socket()
    return context


def _context_of(value: object) -> multiprocessing.context.BaseContext:
    if value is None:
        return multiprocessing.get_context(DEFAULT_START_METHOD)
    if isinstance(value, str):
        methods = multiprocessing.get_all_start_methods()
        if value not in methods:
            raise ValueError(
                f"mp_context {value!r} is not a start method here; "
                f"choose one of {', '.join(map(repr, methods))}"
            )
        return multiprocessing.get_context(value)
    if isinstance(value, multiprocessing.context.BaseContext):
        return value
    raise TypeError(
        "mp_context must be None, a start method name or a multiprocessing "
        f"context, got {value!r}"
    )


def start_method_of(mp_context: object) -> str:
    """The start method an ``mp_context`` option names (``None``: the default).

    For a backend's ``_workers_start_method`` hook (see
    :mod:`executors._mainmodule`), which runs before the backend checks its
    options.

    Raises:
        ValueError, TypeError: as :func:`resolve_mp_context`.
    """
    return _context_of(mp_context).get_start_method()


class ProcessPoolOptions(NamedTuple):
    """The checked options of a pool of worker processes."""

    workers: int
    context: multiprocessing.context.BaseContext
    max_tasks_per_child: int | None


def check_process_pool_options(
    *,
    max_workers: object,
    default_workers: int,
    mp_context: object,
    initializer: object,
    initargs: object,
    max_tasks_per_child: object,
) -> ProcessPoolOptions:
    """Check the options every worker-process pool takes, in one order.

    Raises:
        TypeError, ValueError: from the individual checks above.
    """
    workers = check_max_workers(max_workers, default=default_workers)
    context = resolve_mp_context(mp_context)
    check_initializer(initializer, initargs)
    per_child = check_max_tasks_per_child(max_tasks_per_child)
    return ProcessPoolOptions(workers, context, per_child)


def check_seconds(
    value: object, name: str, *, positive: bool = False, optional: bool = True
) -> float | None:
    """Validate a duration in seconds: the one check every option of seconds uses.

    Args:
        value: The option's value.
        name: The option as the user spelled it, for the message.
        positive: 0 is refused too (a poll interval, a silence limit).
        optional: ``None`` is accepted (and returned): no limit.

    Raises:
        TypeError: ``"NAME must be a number of seconds[ or None], got X"``.
        ValueError: ``"NAME must be greater than 0, got X"`` (``positive``)
            or ``"NAME must be non-negative, got X"``.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        what = "a number of seconds or None" if optional else "a number of seconds"
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")
    if not value >= 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return float(value)


def check_timeout(timeout: object, name: str = "timeout") -> float | None:
    """Validate a timeout in seconds (``None`` waits forever).

    Raises:
        TypeError: not a number.
        ValueError: negative.
    """
    return check_seconds(timeout, name)


def check_chunksize(chunksize: object) -> int | None:
    """Validate ``chunksize`` (``None`` picks it automatically).

    Raises:
        TypeError: not an int.
        ValueError: ``"chunksize must be >= 1."`` (the stdlib's message).
    """
    return check_int(
        chunksize, "chunksize", minimum=1, too_small="chunksize must be >= 1."
    )


def check_buffersize(buffersize: object) -> int | None:
    """Validate ``buffersize`` (``None`` means eager, as the stdlib).

    Raises:
        TypeError: ``"buffersize must be an integer or None"``.
        ValueError: ``"buffersize must be None or > 0"``.
    """
    return check_int(
        buffersize,
        "buffersize",
        minimum=1,
        not_int="buffersize must be an integer or None",
        too_small="buffersize must be None or > 0",
    )


def check_callable(fn: object) -> Callable[..., Any]:
    """Return ``fn`` if callable.

    Raises:
        TypeError: naming the object that was passed instead.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__} {fn!r:.80}")
    return fn


def check_map_arguments(
    fn: object, timeout: object, chunksize: object, buffersize: object
) -> tuple[float | None, int | None, int | None]:
    """Check the arguments of ``map`` and ``map_unordered``, in one order.

    Returns:
        ``(timeout, chunksize, buffersize)``, checked.
    """
    check_callable(fn)
    return (
        check_timeout(timeout),
        check_chunksize(chunksize),
        check_buffersize(buffersize),
    )
