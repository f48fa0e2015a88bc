"""The worker's start-up in a watched Pool, and the status pipe it reports on.

Runs in the workers: imports nothing of the caller's side. The pipe's
messages are ``kind name\0detail``, one ``write()`` each: ``R`` (ready),
``X`` (exiting cleanly), ``F`` (the initializer failed: summary ``\0``
traceback); an empty message wakes the watch.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.util
import threading
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any

from ..._outcome import INITIALIZER_FAILED_EXITCODE
from ..._parentwatch import exit_with_parent

if TYPE_CHECKING:
    from ..._workers import WorkerSpec
    from .taskslots import TaskSlots

__all__ = ["StatusPipe", "read_reports", "start_pool_worker"]

# Status messages are written with one write() of at most PIPE_BUF bytes,
# which POSIX makes atomic: many workers share the pipe without a lock.
_STATUS_MAX_BYTES = 4000

# -- worker side --------------------------------------------------------------


def _report(status: Connection, kind: bytes, name: str, detail: bytes = b"") -> None:
    message = (kind + b" " + name.encode() + b"\0" + detail)[:_STATUS_MAX_BYTES]
    # The caller may be gone; the worker then ends anyway.
    with contextlib.suppress(OSError):
        status.send_bytes(message)


def start_pool_worker(
    status: Connection,
    caller_pid: int,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    task_slots: TaskSlots | None = None,
    worker: WorkerSpec | None = None,
) -> None:
    """Pool's initializer in every worker: tie it to the caller, run the user's.

    Reports on the status pipe whether the initializer raised (then exits
    with :data:`~executors._outcome.INITIALIZER_FAILED_EXITCODE`) or the
    worker is ready, and arranges to report a clean exit. With
    ``task_slots``, the worker claims a slot there for
    :func:`~executors.backends._mp.taskslots.run_tracked`.
    """
    exit_with_parent(caller_pid)
    if worker is not None:
        worker.start()
    name = multiprocessing.current_process().name
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            summary = f"{type(exc).__qualname__}: {exc}"[:500]
            text = "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__)
            )
            budget = _STATUS_MAX_BYTES - 600
            detail = summary.encode() + b"\0" + text[-budget:].encode()
            _report(status, b"F", name, detail)
            # No traceback on the worker's stderr: the caller raises it.
            raise SystemExit(INITIALIZER_FAILED_EXITCODE) from None
    # Runs when the worker process ends through Python (Pool's loop ended
    # between tasks), not when it is killed or calls os._exit: the caller
    # tells a clean exit (max_tasks_per_child) from a crash by it.
    multiprocessing.util.Finalize(
        None, _report, args=(status, b"X", name), exitpriority=0
    )
    if task_slots is not None:
        task_slots.claim()
    _report(status, b"R", name)


# -- caller side --------------------------------------------------------------


class StatusPipe:
    """The pipe workers report on; the caller writes to it to wake the watch.

    Every message is one ``write()`` of at most ``PIPE_BUF`` bytes, which
    POSIX makes atomic, so any number of writers share it without a lock.
    """

    def __init__(self, context: BaseContext) -> None:
        self.reader, self.writer = context.Pipe(duplex=False)
        self._lock = threading.Lock()
        self._open = True

    def wake(self) -> None:
        """Wake the watch (an empty message); safe from any thread."""
        with self._lock:
            if self._open:
                with contextlib.suppress(OSError):
                    self.writer.send_bytes(b"")

    def close(self) -> None:
        # Under the lock: a late wake() must never write to a closed (and
        # possibly reused) descriptor.
        with self._lock:
            self._open = False
            self.writer.close()
        self.reader.close()


def read_reports(reader: Connection) -> Iterator[tuple[bytes, str, bytes]]:
    """Every message waiting in the pipe, as ``(kind, worker name, detail)``.

    Stops at the first moment none waits, or once the pipe is closed. A
    wake-up comes out with an empty kind.
    """
    while True:
        try:
            if not reader.poll():
                return
            message = reader.recv_bytes()
        except (EOFError, OSError):
            return
        kind, _, rest = message.partition(b" ")
        name, _, detail = rest.partition(b"\0")
        yield kind, name.decode(errors="replace"), detail
