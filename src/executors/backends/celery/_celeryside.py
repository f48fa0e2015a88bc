"""Celery at the edges: the apps the executor makes, and Celery's failures.

The one boundary where Celery's errors become the project's: a task's own
exception never gets here (it travels inside the outcome bytes).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from celery import Celery

from ..._errors import ExecutorFailedError, WorkerCrashedError, describe_exitcode

__all__ = [
    "DISCOVER_SECONDS",
    "PUBLISH_RETRY",
    "discover_slots",
    "failure",
    "lost",
    "make_app",
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


def lost(what: str, error: BaseException) -> Callable[[], BaseException]:
    def make() -> BaseException:
        exc = ExecutorFailedError(
            f"lost the connection to the Celery {what} ({type(error).__name__}: "
            f"{error}); the executor is broken"
        )
        exc.__cause__ = error
        return exc

    return make


def make_app(broker: str | None, backend: str | None, config: dict[str, Any]) -> Any:
    app = Celery(
        "executors-caller", set_as_current=False, broker=broker, backend=backend
    )
    app.conf.update({**_TIMEOUTS, **config})
    return app


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
