"""The arguments of ``create("celery", ...)``, checked before anything starts.

Two kinds of deployment take different options: a private one (no
``app``/``broker``/``backend``) runs its workers, so it takes the worker
options; an existing one takes the queue to send to and how long its
workers may stay silent. An option given to the wrong kind is a
``TypeError`` that says which kind it is for. The options every backend
shares are checked by :mod:`executors._options`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from celery import Celery

from ..._options import (
    check_initializer,
    check_int,
    check_max_tasks_per_child,
    check_max_workers,
    check_seconds,
    cpu_count,
)
from ._lostwatch import DEFAULT_LOST_WORKER_TIMEOUT
from ._redisserver import DEFAULT_MAX_MEMORY, LEAST_MEMORY

__all__ = ["DEFAULT", "CeleryArguments", "Default", "check_arguments"]


class Default:
    """The type of an option left out (``None`` means something else)."""

    def __repr__(self) -> str:
        return "<default>"


#: ``lost_worker_timeout`` left out: the default on an existing deployment,
#: and allowed on a private one (where ``None`` would not be).
DEFAULT = Default()


class CeleryArguments(NamedTuple):
    """The checked arguments of a ``celery`` executor."""

    #: An existing deployment (``app``, ``broker`` or ``backend`` given).
    existing: bool
    #: ``max_workers``, or its default; an existing deployment's is asked
    #: of its workers when ``max_workers`` was not given.
    workers: int
    max_tasks_per_child: int | None
    #: The private Redis server's memory cap in bytes.
    max_memory: int
    #: ``lost_worker_timeout`` of an existing deployment; ``None`` for one
    #: that never gives up on its workers, and for a private deployment.
    lost_after: float | None


def check_arguments(
    *,
    max_workers: int | None,
    app: Any,
    broker: str | None,
    backend: str | None,
    queue: str | None,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    max_tasks_per_child: int | None,
    redis_max_memory: int | None,
    lost_worker_timeout: float | Default | None,
    finalizer: Callable[..., object] | None = None,
    finalargs: tuple[Any, ...] = (),
    threads_per_worker: object = "auto",
    max_memory_per_child: object = None,
) -> CeleryArguments:
    """Check the arguments of :class:`~._executor.CeleryExecutor`, in one order.

    Raises:
        TypeError, ValueError: naming the option and what it needs.
    """
    existing = app is not None or broker is not None or backend is not None
    if app is not None and not isinstance(app, Celery):
        raise TypeError(f"app must be a celery.Celery app, got {app!r}")
    if app is not None and (broker is not None or backend is not None):
        raise ValueError("pass app= or broker=/backend=, not both")
    for name, value in (("broker", broker), ("backend", backend), ("queue", queue)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a URL string or None, got {value!r}")
    for name, value in (("broker", broker), ("backend", backend)):
        if value is not None and "://" not in value:
            raise ValueError(
                f"{name} must be a URL such as redis://host:6379/0, got {value!r}"
            )
    if backend is not None and broker is None:
        # Celery would fall back to its default broker (AMQP on
        # localhost): never what a caller who named a backend meant.
        raise ValueError("backend= needs broker= too (or pass app=)")
    if queue == "":
        raise ValueError("queue must be a queue name, got ''")
    if existing:
        for name, given in (
            ("initializer", initializer is not None),
            ("initargs", initargs != ()),
            ("max_tasks_per_child", max_tasks_per_child is not None),
            ("redis_max_memory", redis_max_memory is not None),
            ("finalizer", finalizer is not None),
            ("finalargs", finalargs != ()),
            ("threads_per_worker", threads_per_worker != "auto"),
            ("max_memory_per_child", max_memory_per_child is not None),
        ):
            if given:
                raise TypeError(
                    f"the option {name!r} applies only to the private "
                    "deployment of the 'celery' backend; an existing "
                    "deployment (app=, broker=) runs its workers its own way"
                )
    else:
        for name, given, why in (
            ("queue", queue is not None, "the private one has its own queue"),
            (
                "lost_worker_timeout",
                lost_worker_timeout is not DEFAULT,
                "the private worker is this process's own, watched as a whole",
            ),
        ):
            if given:
                raise TypeError(
                    f"the option {name!r} applies only to an existing "
                    f"deployment (app=, broker=); {why}"
                )
    lost_after = _check_lost_worker_timeout(lost_worker_timeout)
    workers = check_max_workers(max_workers, default=1 if existing else cpu_count())
    check_initializer(initializer, initargs)
    per_child = check_max_tasks_per_child(max_tasks_per_child)
    max_memory = _check_max_memory(redis_max_memory)
    return CeleryArguments(
        existing=existing,
        workers=workers,
        max_tasks_per_child=per_child,
        max_memory=max_memory,
        lost_after=lost_after if existing else None,
    )


def _check_lost_worker_timeout(value: float | Default | None) -> float | None:
    # Positive: a worker silent for 0 s would have its tasks failed at
    # every poll.
    if isinstance(value, Default):
        return DEFAULT_LOST_WORKER_TIMEOUT
    return check_seconds(value, "lost_worker_timeout", positive=True)


def _check_max_memory(value: int | None) -> int:
    checked = check_int(
        value,
        "redis_max_memory",
        minimum=LEAST_MEMORY,
        not_int=f"redis_max_memory must be a number of bytes (an int), got {value!r}",
        too_small=(
            f"redis_max_memory must be at least {LEAST_MEMORY} bytes (8 MiB), "
            f"got {value!r}"
        ),
    )
    return DEFAULT_MAX_MEMORY if checked is None else checked
