"""The worker's end of log forwarding: a handler and the thread that sends.

::

    task: logger.info(...) ─▶ Forwarder.emit: the record as a dict of plain
                              values (message formatted, traceback as text,
                              worker_id and worker_pid added) ─▶ bounded queue
                                   │
          sender thread ◀──────────┘ batches, one connection per worker:
            ─▶ the caller's LogListener (unix socket), in emission order
    after each task: flush() ─▶ a sync frame; the listener answers once every
                                record before it was handled in the caller

Wire: the worker first sends the listener's secret (32 bytes), then frames
of a 4-byte big-endian length and a pickle: ``("r", [record dicts])``;
``("s",)``, which the listener answers with one byte; ``("l", pid, slot)``,
the worker will leave soon (recycling): the caller may start its
replacement now.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["CAPACITY", "DROPPED_LOGGER", "Forwarder", "record_data"]

#: Records a worker keeps while the caller has not taken them: room for a
#: burst of several thousand (a few MB at most) before any is dropped.
CAPACITY = 10_000
#: How long a record waits for room in a full queue before it is dropped.
#: After one such wait the queue counts as congested: records are dropped
#: at once until it is half empty, so a flood slows a task down by this
#: much once, not once per record.
BLOCK_SECONDS = 0.5
#: How long the end of a task waits for its records to reach the caller.
FLUSH_SECONDS = 5.0
#: Records per frame at most.
BATCH = 1000
#: The logger that reports dropped records and failed finalizers.
DROPPED_LOGGER = "executors.workers"

_PLAIN = (str, int, float, bool, type(None))
_formatter = logging.Formatter()


def record_data(
    record: logging.LogRecord, worker_id: int | None, pid: int
) -> dict[str, Any]:
    """The record as plain values: its message formatted, its traceback text.

    Attributes given through ``extra=`` travel too when they are plain
    values (str, int, float, bool, None).
    """
    data = {k: v for k, v in record.__dict__.items() if type(v) in _PLAIN}
    data["msg"] = record.getMessage()
    data["args"] = None
    if record.exc_info and not record.exc_text:
        data["exc_text"] = _formatter.formatException(record.exc_info)
    data["worker_id"] = worker_id
    data["worker_pid"] = pid
    return data


class Forwarder(logging.Handler):
    """Sends the worker's records to the caller's listener, in order.

    Args:
        address: The listener's address.
        secret: The listener's secret, sent first.
        worker_id: Reads this worker's slot for each record.
    """

    def __init__(
        self,
        address: str,
        secret: bytes,
        worker_id: Callable[[], int | None],
        capacity: int = CAPACITY,
    ) -> None:
        super().__init__()
        self._worker_id = worker_id
        self._capacity = capacity
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(address)
        self._sock.sendall(secret)
        self._queue: deque[dict[str, Any] | threading.Event | tuple[Any, ...]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._dropped = 0
        self._congested = False
        self._unflushed = False
        self._closed = False
        self._broken = False
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=self._send_loop, name="executors-log-forward", daemon=True
        )
        self._thread.start()
        _forwarders.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        if threading.current_thread() is self._thread:
            return  # never about its own sending
        try:
            data = record_data(record, self._worker_id(), self._pid)
        except Exception:
            self.handleError(record)
            return
        with self._cond:
            if self._broken or self._closed:
                self._dropped += 1
                return
            if len(self._queue) >= self._capacity:
                if not self._congested:
                    deadline = time.monotonic() + BLOCK_SECONDS
                    while len(self._queue) >= self._capacity and not self._broken:
                        left = deadline - time.monotonic()
                        if left <= 0 or not self._cond.wait(left):
                            break
                if len(self._queue) >= self._capacity:
                    self._congested = True
                    self._dropped += 1
                    return
            if self._congested and len(self._queue) < self._capacity // 2:
                self._congested = False
            self._queue.append(data)
            self._unflushed = True
            self._cond.notify_all()

    def flush(self) -> None:
        self.sync()

    def announce(self, frame: tuple[Any, ...]) -> None:
        """Send ``frame`` (a notice to the caller) after the records so far."""
        with self._cond:
            if self._broken or self._closed:
                return
            self._queue.append(frame)
            self._cond.notify_all()

    def sync(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Wait (bounded) until the records emitted so far reached the caller."""
        with self._cond:
            if not self._unflushed or self._broken or self._closed:
                return not self._broken
            self._unflushed = False
            done = threading.Event()
            self._queue.append(done)
            self._cond.notify_all()
        # Set on an answer, or at once when the connection broke.
        return done.wait(timeout) and not self._broken

    def close(self) -> None:
        """Flush, stop the sender and close the connection."""
        self.sync()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(FLUSH_SECONDS)
        self._sock.close()
        super().close()

    def _send_loop(self) -> None:
        sync: threading.Event | None = None
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if not self._queue:
                        return  # closed, and everything was sent
                    batch: list[dict[str, Any]] = []
                    sync = None
                    notice: tuple[Any, ...] | None = None
                    while self._queue and len(batch) < BATCH:
                        item = self._queue.popleft()
                        if isinstance(item, threading.Event):
                            sync = item
                            break
                        if isinstance(item, tuple):
                            notice = item
                            break
                        batch.append(item)
                    dropped, self._dropped = self._dropped, 0
                    self._cond.notify_all()  # room for emit()
                if dropped:
                    batch.append(self._dropped_record(dropped))
                if batch:
                    self._send(("r", batch))
                if notice is not None:
                    self._send(notice)
                if sync is not None:
                    self._send(("s",))
                    if not self._sock.recv(1):
                        raise ConnectionError("the caller's log listener closed")
                    sync.set()
        except OSError:
            with self._cond:
                self._broken = True
                # Nobody will answer: release whoever waits in flush(),
                # the flush being sent included.
                if sync is not None:
                    sync.set()
                for item in self._queue:
                    if isinstance(item, threading.Event):
                        item.set()
                self._queue.clear()
                self._cond.notify_all()

    def _forget_in_child(self) -> None:
        # A child forked by a task (os.fork) has no sender thread and must
        # never write into the worker's connection: it drops its records.
        self._broken = True
        self._queue.clear()
        logging.getLogger().removeHandler(self)
        self._sock.close()  # the child's copy only

    def _send(self, frame: tuple[Any, ...]) -> None:
        body = pickle.dumps(frame, pickle.HIGHEST_PROTOCOL)
        self._sock.sendall(struct.pack(">I", len(body)) + body)

    def _dropped_record(self, count: int) -> dict[str, Any]:
        wid = self._worker_id()
        record = logging.makeLogRecord(
            {
                "name": DROPPED_LOGGER,
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": (
                    f"worker {wid} (pid {self._pid}) dropped {count} log "
                    "records: its tasks logged faster than the caller took "
                    "them in"
                ),
            }
        )
        return record_data(record, wid, self._pid)


_forwarders: weakref.WeakSet[Forwarder] = weakref.WeakSet()


def _forget_in_child() -> None:
    for forwarder in list(_forwarders):
        forwarder._forget_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
