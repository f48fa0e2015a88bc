"""The tasks one executor has sent to Celery: publishing, results, revoking.

Each call the queue launches becomes one task message named
``executors.run_call`` whose id is ``<executor prefix>-<number>``; the
:class:`SentTasks` table maps the number back to the call until its result
arrives, the task is revoked, or the executor breaks. The executor decides
what a result means; this table only decides which call it belongs to, and
whether it still counts.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis.exceptions
from celery import states
from kombu.exceptions import OperationalError

from ..._callqueue import Call
from ._celeryside import PUBLISH_RETRY, connection_lost
from .task import TASK_NAME
from .worker import refused_for_memory

# What a publish raises when the broker is gone (kombu wraps the Redis
# client's errors once its retries are spent).
_BROKER_ERRORS = (OperationalError, redis.exceptions.ConnectionError, OSError)

__all__ = ["SentTasks"]

_log = logging.getLogger("executors")


class SentTasks:
    """The calls one executor has out on Celery, by task number.

    Args:
        settle_task: Settles a call with the result meta of its task; called
            outside the table's lock.
        break_executor: Breaks the executor with the error the callable
            makes (the broker refused a task message).
        refused: Makes the error of a task message that Redis refused for
            its memory cap (the private deployment's); ``None`` lets the
            refusal through as it is.
    """

    def __init__(
        self,
        settle_task: Callable[[Call, dict[str, Any]], None],
        break_executor: Callable[[Callable[[], BaseException]], None],
        refused: Callable[[], BaseException] | None = None,
    ) -> None:
        self._settle_task = settle_task
        self._break_executor = break_executor
        self._refused = refused
        #: What every task id of the executor starts with.
        self.prefix = uuid.uuid4().hex
        self._numbers = itertools.count()
        # The app, queue and serializer tasks go out with: set by connect().
        self.app: Any = None
        self.queue_name: str | None = None
        self.serializer = "json"
        self._out: dict[str, Call] = {}
        # Task number -> when its message was sent, kept only for the
        # lost-worker watch (an existing deployment), which prunes it.
        self.track_times = False
        self._sent_at: dict[str, float] = {}
        # Calls being revoked by stop -> the REVOKED state that arrived
        # meanwhile (the queue settles them, not that state).
        self._revoking: dict[str, dict[str, Any] | None] = {}
        self._lock = threading.Lock()

    def connect(self, app: Any, queue_name: str) -> None:
        """Send tasks with ``app`` to ``queue_name``, in the app's serializer."""
        self.app = app
        self.queue_name = queue_name
        self.serializer = app.conf.task_serializer

    def task_id(self, number: str) -> str:
        """The Celery task id of the executor's task ``number``."""
        return f"{self.prefix}-{number}"

    def launch(self, call: Call) -> None:
        """Publish one call as a task message (the call queue's launch)."""
        number = str(next(self._numbers))
        task_id = self.task_id(number)
        app = self.app
        message = app.amqp.create_task_message(task_id, TASK_NAME, (call.payload,), {})
        with self._lock:
            self._out[number] = call
            if self.track_times:
                self._sent_at[number] = time.monotonic()
        call.handle = number
        try:
            with app.producer_or_acquire() as producer:
                app.amqp.send_task_message(
                    producer,
                    TASK_NAME,
                    message,
                    queue=self.queue_name,
                    serializer=self.serializer,
                    retry=True,
                    retry_policy=PUBLISH_RETRY,
                )
        except Exception as exc:
            with self._lock:
                self._out.pop(number, None)
                self._sent_at.pop(number, None)
            # Not app.connection().connection_errors: building a connection
            # to ask creates a transport whose epoll only the garbage
            # collector closes.
            if self._refused is not None and refused_for_memory(exc):
                # That task alone fails: memory frees as results are read.
                raise self._refused() from exc
            if isinstance(exc, _BROKER_ERRORS):
                self._break_executor(connection_lost("broker", exc))
            raise

    def on_result(self, number: str, meta: dict[str, Any]) -> None:
        """Hand a task's result to its call (the result listener's callback)."""
        with self._lock:
            if number in self._revoking and meta["status"] == states.REVOKED:
                # Our own revoke, faster than stop: the queue settles it.
                self._revoking[number] = meta
                return
            call = self._out.pop(number, None)
        if call is None:
            return  # failed already (interrupted, broken, stopped)
        self._settle_task(call, meta)

    def stop(self, call: Call) -> bool:
        """Stop one running task: revoke it, killing its pool process.

        The worker kills the process running the task (or drops the task
        if it has not started) and forks a new pool process; the executor
        lives on. True once the revoke is sent.
        """
        number = call.handle
        with self._lock:
            if number is None or self._out.get(number) is not call:
                return False  # its result has arrived
            self._revoking[number] = None
        task_id = self.task_id(number)
        try:
            self.app.control.revoke(task_id, terminate=True, signal="SIGKILL")
        except Exception:
            # The broker is unreachable: the task runs on.
            _log.warning("executors: could not revoke task %s", task_id, exc_info=True)
            with self._lock:
                revoked = self._revoking.pop(number, None)
                if revoked is not None:
                    self._out.pop(number, None)
            if revoked is not None:
                self._settle_task(call, revoked)  # revoked all the same
            return False
        with self._lock:
            # Its REVOKED state, published by the worker, settles nothing.
            self._revoking.pop(number, None)
            self._out.pop(number, None)
        return True

    def take(self, number: str) -> Call | None:
        """The call of task ``number``, no longer out; None if it was not."""
        with self._lock:
            return self._out.pop(number, None)

    def take_by_id(self, task_id: str) -> Call | None:
        """:meth:`take` by Celery task id; None for another executor's task."""
        prefix = self.prefix + "-"
        if not task_id.startswith(prefix):
            return None
        return self.take(task_id[len(prefix) :])

    def outstanding(self) -> list[str]:
        """The numbers of the tasks still waiting for a result."""
        with self._lock:
            return list(self._out)

    def outstanding_since(self) -> dict[str, float]:
        """``{number: time.monotonic() when sent}`` of the tasks still out."""
        with self._lock:
            # Entries of tasks no longer out go here, once a second, not
            # on every result: no extra work per task.
            for number in [n for n in self._sent_at if n not in self._out]:
                del self._sent_at[number]
            return dict(self._sent_at)

    def take_all(self) -> list[str]:
        """Forget every task still out; return their numbers."""
        with self._lock:
            numbers = list(self._out)
            self._out.clear()
        return numbers

    def terminate(self, numbers: list[str], signal_name: str) -> None:
        """Revoke tasks with ``terminate=True``, sending ``signal_name``.

        Their pool processes get the signal. Best effort: through a broker
        that is gone, nothing is stopped.
        """
        ids = [self.task_id(number) for number in numbers]
        with contextlib.suppress(Exception):
            self.app.control.revoke(ids, terminate=True, signal=signal_name)
