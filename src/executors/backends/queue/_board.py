"""The board: shared memory where each worker posts what it is running.

A few memory stores per task or piece of a chunk, no system call: after a
crash the parent reads there which task (and which items) were running,
and it times tasks out live. A worker also posts the bytes it has sent on
its result pipe (:data:`SENT`), the bound :mod:`._wire` reads frames
against.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from multiprocessing.context import BaseContext
from typing import Any

__all__ = [
    "END",
    "FIELDS",
    "ITEM",
    "POLLING",
    "RETURNED",
    "SENT",
    "STARTED",
    "TASK",
    "Board",
]

# Board layout: FIELDS int64 per worker slot. SENT: the bytes the worker
# has sent on its result pipe, the frame being written included. POLLING:
# 1 from the start of a task after which the worker will poll its task
# pipe, until it stops polling (docs/backends/queue.md, "Inside").
TASK, ITEM, END, STARTED, SENT, POLLING = 0, 1, 2, 3, 4, 5
FIELDS = 6
# STARTED holds a start time while a task (or a piece of a chunk) runs; 0
# while the task is received and its arguments unpickled, before it starts;
# RETURNED once its function has returned (or raised) and the outcome is
# being pickled and sent: the task's timeout no longer runs.
RETURNED = -1


class Board:
    """``slots`` rows of :data:`FIELDS`; a worker writes its row, the parent reads.

    Per row: the task id (posted once its frame header arrives); for a
    chunk, the items ``[ITEM, END)`` running as one piece; and when that
    piece started (``time.monotonic_ns()``, shared by every process of the
    machine). A ``memfd`` on Linux, passed to workers as a descriptor;
    elsewhere a ``RawArray`` (which costs importing ctypes).
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

    def polling(self) -> int:
        """How many workers poll their task pipe."""
        return sum(self.view[POLLING::FIELDS])

    def busy_besides(self, slot: int) -> int:
        """How many workers other than ``slot``'s run a task or poll."""
        view, mine, busy = self.view, slot * FIELDS, 0
        for base in range(0, len(view), FIELDS):
            if base != mine and (view[base + STARTED] > 0 or view[base + POLLING]):
                busy += 1
        return busy

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
