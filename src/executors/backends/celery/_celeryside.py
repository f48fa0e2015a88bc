"""Celery at the edges: the apps the executor makes, and Celery's failures.

The one boundary where Celery's errors become the project's: a task's own
exception never gets here (it travels inside the outcome bytes).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu import pools

from ..._errors import ExecutorFailedError, WorkerCrashedError, describe_exitcode

__all__ = [
    "DISCOVER_SECONDS",
    "PUBLISH_RETRY",
    "close_app",
    "connection_lost",
    "discover_slots",
    "failure",
    "make_app",
    "worker_lost_error",
]

#: How long the workers of an existing deployment get to report their pool
#: sizes when ``max_workers`` is not given.
DISCOVER_SECONDS = 1.0
# A broker that refuses a task message is retried this way (about 1.5 s in
# all) before the executor breaks: bounded, never a hang.
PUBLISH_RETRY = {
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 0.5,
}
# Socket timeouts of the connections this executor opens itself.
_TIMEOUTS: dict[str, Any] = {
    "broker_transport_options": {"socket_timeout": 5, "socket_connect_timeout": 5},
    "redis_socket_timeout": 5,
    "redis_socket_connect_timeout": 5,
}
_LOST = re.compile(r"(signal (\d+)|exitcode (\d+))")


def _exitcode(message: str) -> int | None:
    match = _LOST.search(message)
    if match is None:
        return None
    if match.group(2):
        return -int(match.group(2))
    return int(match.group(3))


def failure(status: str, error: Any) -> BaseException:
    """A Celery-level failure of our task as the project's exception.

    The task itself never raises (the call's exception travels in the
    outcome), so a ``FAILURE`` is Celery's: a pool process lost, a time
    limit, a message the worker could not decode.
    """
    name = type(error).__name__
    if name in {"WorkerLostError", "TimeLimitExceeded", "Terminated"}:
        code = _exitcode(str(error))
        crash = WorkerCrashedError(
            f"the Celery pool process running this task died "
            f"({describe_exitcode(code)}): {error}",
            code,
        )
        crash.__cause__ = error if isinstance(error, BaseException) else None
        return crash
    if status == "REVOKED" and "terminated" in str(error):
        # Not by this executor (its own revokes settle nothing): another
        # client's revoke, or Celery's known race where a revoke meant for
        # a task that had just finished kills the process's next task.
        crash = WorkerCrashedError(
            "the Celery pool process running this task was killed by a revoke "
            f"with terminate=True that this executor did not send: {error!r}",
            None,
        )
        crash.__cause__ = error if isinstance(error, BaseException) else None
        return crash
    failed = ExecutorFailedError(f"Celery did not run the task ({status}): {error!r}")
    if isinstance(error, BaseException):
        failed.__cause__ = error
    return failed


def connection_lost(what: str, error: BaseException) -> Callable[[], BaseException]:
    """The error factory of an executor that lost its broker or result backend."""

    def make() -> BaseException:
        exc = ExecutorFailedError(
            f"lost the connection to the Celery {what} ({type(error).__name__}: "
            f"{error}); the executor is broken"
        )
        exc.__cause__ = error
        return exc

    return make


def worker_lost_error(
    worker: str | None, silent: float, lost_worker_timeout: float
) -> WorkerCrashedError:
    """The error of a task lost with a worker that stopped answering.

    Args:
        worker: The worker that held it, or ``None`` if no worker ever
            named it (see :mod:`._lostwatch`).
        silent: Seconds the worker has been silent.
        lost_worker_timeout: The executor's option, in seconds.
    """
    if worker is None:
        what = (
            "no Celery worker has named this task in "
            f"{lost_worker_timeout:g} s (lost_worker_timeout) and it left the "
            "broker's queue: the worker that took it never answered a poll "
            "and is likely lost"
        )
    else:
        what = (
            f"the Celery worker {worker!r} holding this task stopped answering "
            f"{silent:.1f} s ago (lost_worker_timeout={lost_worker_timeout:g} s): "
            "its machine, its network or its process is likely lost"
        )
    return WorkerCrashedError(
        f"{what}. The task was revoked; if that machine is only cut off, "
        "it may still run there",
        None,
    )


def make_app(broker: str | None, backend: str | None, config: dict[str, Any]) -> Any:
    app = Celery(
        "executors-caller", set_as_current=False, broker=broker, backend=backend
    )
    app.conf.update({**_TIMEOUTS, **config})
    return app


def close_app(app: Any, private: bool) -> None:
    """Close the connections an app of ours opened; best effort, never raises.

    ``app.close()`` alone closes nothing: the app's producer and connection
    pools live on in kombu's process-wide registries (keyed by broker URL),
    each holding open Redis sockets and an epoll fd. (The result backend's
    client is the result listener's to close: it may still be reading.)

    Args:
        app: An app that :func:`make_app` made.
        private: The broker is the private deployment's, whose URL (socket
            path, password) no other app shares: its pools are dropped from
            kombu's registries. An existing deployment's pools are shared by
            every app on that URL, so they are left to kombu.
    """
    if private:
        # Looked up in kombu's registries (EqualityDicts, keyed by this
        # hash), not on the app: the producer pool takes its connection
        # pool from the registry, not from ``app.pool``.
        key = app.connection_for_write().__eqhash__()
        # Producers first: each holds a connection of the connection pool.
        for group in (pools.producers, pools.connections):
            pool = dict.pop(group, key, None)
            if pool is not None:
                _close_pool(pool)
    with contextlib.suppress(Exception):
        app.close()


def _close_pool(pool: Any) -> None:
    """Close a kombu pool and the epoll fds of its connections' transports."""
    connections = [getattr(pool, "connection", None)]
    with contextlib.suppress(Exception):
        connections += [*pool._dirty, *pool._resource.queue]
    # Taken before force_close_all, which drops each connection's transport.
    # The template connection of a connection pool has one too, once
    # anything asked it for ``connection_errors``.
    transports = [getattr(c, "_transport", None) for c in connections]
    with contextlib.suppress(Exception):
        pool.force_close_all()
    for transport in transports:
        # kombu's Redis transport never closes the epoll of its poller:
        # only the garbage collector would, much later (reference cycles).
        poller = getattr(getattr(transport, "cycle", None), "poller", None)
        if poller is not None:
            with contextlib.suppress(Exception):
                poller.close()


def discover_slots(app: Any) -> int:
    """The pool processes of every worker that answers, in all."""
    try:
        stats = app.control.inspect(timeout=DISCOVER_SECONDS).stats() or {}
    except Exception as exc:
        raise ExecutorFailedError(
            f"could not reach the Celery deployment's broker: {exc!r}"
        ) from exc
    slots = sum(
        int(s.get("pool", {}).get("max-concurrency", 0)) for s in stats.values()
    )
    if slots < 1:
        raise ExecutorFailedError(
            f"no Celery worker answered within {DISCOVER_SECONDS:g}s; start "
            "workers that import executors.backends.celery.task, or pass "
            "max_workers= to hand that many tasks to the broker without asking"
        )
    return slots
