"""The board: shared memory where each worker posts what it is running.

Each worker posts on the :class:`Board` the task (and the piece of a chunk)
it is running. Writing it costs a worker a few memory stores per task or
piece, no system call; it is what lets the parent tell, after a crash,
which task was running and which were only waiting in the pipe, and time
tasks out live. A worker also posts there the bytes it has sent on its
result pipe (:data:`SENT`), the bound :mod:`._wire` reads frames against.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from multiprocessing.context import BaseContext
from typing import Any

__all__ = ["END", "FIELDS", "ITEM", "RETURNED", "SENT", "STARTED", "TASK", "Board"]

# Board layout: FIELDS int64 per worker slot. SENT: the bytes the worker
# has sent on its result pipe, the frame being written included.
TASK, ITEM, END, STARTED, SENT = 0, 1, 2, 3, 4
FIELDS = 5
# STARTED holds a start time while a task (or a piece of a chunk) runs; 0
# while the task is received and its arguments unpickled, before it starts;
# RETURNED once its function has returned (or raised) and the outcome is
# being pickled and sent: the task's timeout no longer runs.
RETURNED = -1


class Board:
    """Shared memory where each worker posts what it is running.

    Per worker slot: the id of the task it runs (posted as soon as the
    task's frame header arrives); for a chunk, the items ``[ITEM, END)`` it
    is running as one piece; and when that piece started
    (``time.monotonic_ns()``, a clock every process of the machine shares;
    0 before it starts, :data:`RETURNED` after).
    A worker writes, the parent reads: after the worker's death (exact), and
    live to time tasks out.

    On Linux the memory is a ``memfd`` passed to workers as a descriptor;
    elsewhere a ``multiprocessing`` ``RawArray`` (which costs importing
    ctypes, tens of milliseconds at the first executor).

    Args:
        slots: Rows, one per worker.
        ctx: The context whose workers will share it.
    """

    def __init__(self, slots: int, ctx: BaseContext | None = None) -> None:
        self.size = slots * FIELDS * 8
        self.fd = -1
        self.array: Any = None
        self.memory: Any = None
        with contextlib.suppress(AttributeError, OSError):  # kernels before 3.17
            self.fd = os.memfd_create("executors-queue-board", os.MFD_CLOEXEC)
        if self.fd >= 0:
            os.ftruncate(self.fd, self.size)
            self.memory = memory = mmap.mmap(self.fd, self.size)
        else:
            if ctx is None:
                import multiprocessing

                ctx = multiprocessing.get_context()
            self.array = memory = ctx.RawArray("b", self.size)
        self.view = memoryview(memory).cast("B").cast("q")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Only ever pickled while a worker is being started (spawn or
        # forkserver), where DupFd hands the descriptor to the child.
        if self.fd >= 0:
            from multiprocessing.reduction import DupFd

            return _attach, (DupFd(self.fd), self.size)
        return _attach_array, (self.array, self.size)

    def close(self) -> None:
        """Release the memory (in the parent, once every worker is gone)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.memory is not None:
            # The mapping holds a descriptor of its own until closed.
            self.view.release()
            self.memory.close()
            self.memory = None

    def clear(self, slot: int) -> None:
        base = slot * FIELDS
        for field in range(FIELDS):
            self.view[base + field] = 0

    def read(self, slot: int) -> tuple[int, int, int, int]:
        """Return ``(task id, first item, end item, start ns)`` of ``slot``."""
        base = slot * FIELDS
        view = self.view
        return (
            view[base + TASK],
            view[base + ITEM],
            view[base + END],
            view[base + STARTED],
        )


def _attach(dup: Any, size: int) -> Board:
    board = Board.__new__(Board)
    board.size, board.fd, board.array, board.memory = size, -1, None, None
    fd = dup.detach()
    try:
        board.view = memoryview(mmap.mmap(fd, size)).cast("B").cast("q")
    finally:
        os.close(fd)  # the mapping keeps the memory
    return board


def _attach_array(array: Any, size: int) -> Board:
    board = Board.__new__(Board)
    board.size, board.fd, board.array, board.memory = size, -1, array, None
    board.view = memoryview(array).cast("B").cast("q")
    return board
