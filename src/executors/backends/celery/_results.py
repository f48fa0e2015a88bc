"""The thread that settles futures from the Redis result backend's pub/sub.

The Redis result backend stores a task's result under
``celery-task-meta-<task id>`` and publishes it on a channel of the same
name. Every task id of one executor starts with the executor's own prefix,
so one pattern subscription (``PSUBSCRIBE celery-task-meta-<prefix>-*``)
made once, before the first task is sent, delivers every result of this
executor and nothing else: no subscribe per task, no poll per outstanding
``AsyncResult``; the cost of a result is one message.

Pub/sub forgets what it published while the connection was down, so after
a reconnect the keys of the calls still out are read back in one ``MGET``.
A result backend that stays unreachable for :data:`LOST_SECONDS` breaks
the executor. Each result is deleted from Redis right after its future
settles (one ``DEL`` per batch of messages read).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import states

from ..._lifecycle import ManagerThread

__all__ = ["LOST_SECONDS", "ResultListener"]

#: How long the result backend may stay unreachable before the executor
#: breaks: a restart of Redis is forgiven, a Redis that is gone is not.
LOST_SECONDS = 5.0
#: The longest the thread sleeps in one read: the bound on noticing a lost
#: connection that raises nothing (and on stopping if the wake-up message
#: cannot be sent).
READ_SECONDS = 1.0
# Between two reconnection attempts.
_RETRY_SECONDS = 0.2
# The suffix of the channel the executor publishes on to stop the thread.
_STOP = "stop"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _escape_glob(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


class ResultListener(ManagerThread):
    """Receives the results of one executor's tasks and hands them on.

    Args:
        backend: The app's Redis result backend.
        prefix: What every task id of the executor starts with.
        on_result: Called in this thread with ``(task id, meta)`` for each
            task that reached a ready state (``SUCCESS``, ``FAILURE``,
            ``REVOKED``).
        outstanding: Returns the task ids still waiting for a result (read
            back after a reconnect).
        on_connection_lost: Called once with the error if the result backend stays
            unreachable; the thread then ends.
        on_failure: Called if the loop itself raised (a bug).
        close_client: Disconnect the backend's Redis client when the thread
            ends (the executor made the app); never a caller's app's client,
            which the caller's own threads may be using.
    """

    def __init__(
        self,
        backend: Any,
        prefix: str,
        on_result: Callable[[str, dict[str, Any]], object],
        outstanding: Callable[[], list[str]],
        on_connection_lost: Callable[[BaseException], object],
        on_failure: Callable[[BaseException], object],
        close_client: bool = False,
    ) -> None:
        super().__init__(name="executors-celery-results")
        self._backend = backend
        self._client = backend.client
        self._key_prefix = _text(backend.get_key_for_task(prefix + "-"))
        self._stop_channel = self._key_prefix + _STOP
        self._pattern = _escape_glob(self._key_prefix) + "*"
        self._on_result = on_result
        self._outstanding = outstanding
        self._on_connection_lost = on_connection_lost
        self._failed = on_failure
        self._close_client = close_client
        self._stopping = False
        self._pubsub: Any = None
        # Held by stop() while it publishes the wake-up and by the thread
        # as it closes the client's connections, which include the one
        # that publish uses; once ended, there is nothing to wake.
        self._publishing = threading.Lock()
        self._ended = False

    def subscribe(self) -> None:
        """Subscribe now, in the caller: no result can be missed after this."""
        self._pubsub = self._connect()

    def _connect(self) -> Any:
        pubsub = self._client.pubsub(ignore_subscribe_messages=False)
        try:
            pubsub.psubscribe(self._pattern)
            deadline = time.monotonic() + LOST_SECONDS
            while True:
                message = pubsub.get_message(timeout=READ_SECONDS)
                if message is not None and message["type"] == "psubscribe":
                    return pubsub
                if time.monotonic() > deadline:
                    raise TimeoutError("Redis did not confirm the subscription")
        except BaseException:
            pubsub.close()
            raise

    def stop(self) -> None:
        """Ask the thread to end; it does at once, or within READ_SECONDS."""
        self._stopping = True
        with self._publishing:
            if self._ended:
                return
            # Redis may be gone: the read then times out instead.
            with contextlib.suppress(Exception):
                self._client.publish(self._stop_channel, b"")

    def on_failure(self, error: BaseException) -> None:
        self._close()
        self._failed(error)

    def loop(self) -> None:
        try:
            self._listen()
        finally:
            self._end()

    def _listen(self) -> None:
        pending_deletes: list[str] = []
        while not self._stopping:
            try:
                message = self._pubsub.get_message(timeout=READ_SECONDS)
                while message is not None:
                    self._on_message(message, pending_deletes)
                    message = self._pubsub.get_message(timeout=0)
                if pending_deletes:
                    self._client.delete(*pending_deletes)
                    pending_deletes.clear()
            except self._backend.connection_errors as exc:
                if self._stopping:
                    break
                if not self._reconnect(exc):
                    return

    def _on_message(self, message: dict[str, Any], pending_deletes: list[str]) -> None:
        if message["type"] != "pmessage":
            return
        channel = _text(message["channel"])
        if channel == self._stop_channel:
            return
        self._hand_on(channel, message["data"], pending_deletes)

    def _hand_on(self, key: str, data: Any, pending_deletes: list[str]) -> None:
        meta = self._backend.decode_result(data)
        if meta.get("status") not in states.READY_STATES:
            return  # STARTED, RETRY: not an outcome
        # Deleted once read, on every deployment: Redis keeps nothing of
        # a settled future (the private one would otherwise hold every
        # result for result_expires, an existing one would hold our litter).
        pending_deletes.append(key)
        self._on_result(key[len(self._key_prefix) :], meta)

    def _reconnect(self, error: BaseException) -> bool:
        """Subscribe again and read back what was missed; False once lost."""
        self._close()
        deadline = time.monotonic() + LOST_SECONDS
        while not self._stopping:
            try:
                self._pubsub = self._connect()
                self._read_back()
                return True
            except (*self._backend.connection_errors, TimeoutError) as exc:
                error = exc
            if time.monotonic() > deadline:
                self._on_connection_lost(error)
                return False
            time.sleep(_RETRY_SECONDS)
        return False

    def _read_back(self) -> None:
        ids = self._outstanding()
        if not ids:
            return
        keys = [self._key_prefix + task_id for task_id in ids]
        pending: list[str] = []
        for key, data in zip(keys, self._client.mget(keys), strict=True):
            if data is not None:
                self._hand_on(key, data, pending)
        if pending:
            self._client.delete(*pending)

    def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()

    def _end(self) -> None:
        """Close the subscription and, if ours, the client's connections.

        Called in this thread as it ends: closing a socket another thread
        may be reading is never safe (its number can be reused at once).
        """
        self._close()
        # Not under a stop() publishing now: its read would wait out the
        # socket timeout on a connection closed under it.
        with self._publishing:
            self._ended = True
            if self._close_client:
                with contextlib.suppress(Exception):
                    self._client.connection_pool.disconnect()
