"""The records the pool keeps: work items, worker handles, their errors.

* :class:`WorkItem`: one task (or one chunk of a ``map``) and its future.
* :class:`WorkerHandle`: the parent's view of one worker process: its two
  pipes, the items sent to it and not yet answered, oldest first, and the
  frames not yet (fully) written to its pipe.
* :class:`Replay` and :class:`KillReason`: what the pool remembers to blame
  the right item when a worker dies.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from ..._control import TaskOptions
from ..._errors import (
    ExecutorFailedError,
    ExecutorInterruptedError,
    TaskKilledError,
    TaskTimeoutError,
    WorkerCrashedError,
    describe_exitcode,
)
from ..._futures import fail_futures, notify_cancelled
from ..._map import Chunk
from ._wire import CHUNK, HEADER, Channel, Part

__all__ = [
    "KillReason",
    "Replay",
    "WorkItem",
    "WorkerHandle",
    "bad_frame_error",
    "crash_error",
    "drop",
    "early_crash_error",
    "exiting_error",
    "find_item",
    "interrupted_error",
    "killed_error",
    "manager_failed_error",
    "time_limit",
    "timeout_error",
]


class WorkItem:
    """One task, or one chunk of a ``map``, and the future it resolves.

    Args:
        task_id: Unique within the pool; workers echo it back.
        kind: ``wire.CALL`` or ``wire.CHUNK``.
        future: The future to resolve.
        body: The pickled ``(fn, args, kwargs)`` or ``(fn, chunk)``, kept
            until the item is done so that it can be sent again.
        buffers: The pickle's out-of-band buffers.
        timeout: Seconds the task (each item of a chunk) may run.
        fn: For a chunk: the callable, to send a part of it again.
        chunk: For a chunk: its items.
        internal: A future no caller holds (the rest of a crashed chunk).
        options: For a task with retries: its options (see
            :meth:`.pool.Pool.retry_locked`).
    """

    __slots__ = (
        "attempts",
        "body",
        "buffers",
        "chunk",
        "early_deaths",
        "elapsed",
        "fn",
        "future",
        "internal",
        "kill",
        "kind",
        "options",
        "replay",
        "size",
        "started",
        "task_id",
        "timeout",
        "undecodable",
        "values",
    )

    def __init__(
        self,
        task_id: int,
        kind: int,
        future: Future[Any],
        body: bytes,
        buffers: list[memoryview],
        timeout: float | None,
        fn: Callable[..., Any] | None = None,
        chunk: Chunk | None = None,
        internal: bool = False,
        options: TaskOptions | None = None,
    ) -> None:
        self.task_id = task_id
        self.kind = kind
        self.future = future
        self.body = body
        self.buffers = buffers
        # Bytes it takes in a pipe, frame header included.
        self.size = HEADER.size + len(body)
        if buffers:
            self.size += sum(8 + b.nbytes for b in buffers)
        self.timeout = timeout
        self.fn = fn
        self.chunk = chunk
        self.internal = internal
        self.options = options
        self.attempts = 1  # runs so far, counting the one in progress
        self.started = False  # set_running_or_notify_cancel() was called
        self.kill = False  # kill_task() asked for it
        self.values: list[Any] = []  # a chunk's values received so far
        self.undecodable: BaseException | None = None  # a PARTIAL that failed
        self.elapsed = 0.0
        self.replay: Replay | None = None
        # Workers that died with it posted but not started (see
        # Pool._sort_out_locked).
        self.early_deaths = 0

    @property
    def watched(self) -> bool:
        """The manager must watch it while it runs (timeout, kill, replay)."""
        return self.kill or self.timeout is not None or self.replay is not None


class Replay:
    """How to find, in a rerun, the item a worker was running when killed.

    A worker killed from outside while it ran several fast items as one
    piece leaves the parent unsure which item was running. The rerun runs
    those items one at a time; the items that had finished before the kill
    finish again within the time the whole piece had run, so the first item
    that runs longer than that (``budget``) was the one running: it fails
    with the original crash's error. A crash the item causes itself simply
    happens again, at that item.

    Attributes:
        budget: Seconds an item of the rerun may run before it is taken for
            the one that was running.
        careful: The items of the rerun that ran in the crashed piece.
        error: Builds the original crash's error.
    """

    __slots__ = ("budget", "careful", "error")

    def __init__(
        self, budget: float, careful: int, error: Callable[[], BaseException]
    ) -> None:
        self.budget = budget
        self.careful = careful
        self.error = error


class KillReason:
    """Why the pool killed a worker: for which item (and item index)."""

    __slots__ = ("error", "index", "item")

    def __init__(
        self,
        item: WorkItem | None,
        index: int,
        error: Callable[[], BaseException] | None,
    ) -> None:
        self.item = item
        self.index = index
        self.error = error


class WorkerHandle:
    """The parent's side of one worker process.

    Args:
        process: The worker process.
        tasks: Write end of its task pipe (non-blocking).
        results: Read end of its result pipe.
        slot: Its row on the board, and its index in ``Pool.workers``.
        capacity: Bytes its task pipe holds.

    Attributes:
        outbox: Frames of held items not yet fully written to the task
            pipe, oldest first, the first one possibly cut where the last
            write stopped. Only the manager thread writes them; while it is
            not empty nobody else writes to this pipe.
    """

    __slots__ = (
        "capacity",
        "eof",
        "gone",
        "held",
        "held_bytes",
        "kill_reason",
        "outbox",
        "process",
        "ready",
        "results",
        "sent",
        "slot",
        "tasks",
    )

    def __init__(
        self, process: Any, tasks: Channel, results: Channel, slot: int, capacity: int
    ) -> None:
        self.process = process
        self.tasks = tasks
        self.results = results
        self.slot = slot
        self.capacity = capacity  # bytes the task pipe holds
        self.held: deque[WorkItem] = deque()
        self.held_bytes = 0
        self.outbox: deque[list[Part]] = deque()
        self.sent = 0
        self.ready = False
        self.eof = False
        self.gone = False
        self.kill_reason: KillReason | None = None

    def kill(
        self, reason: KillReason | None, sig: signal.Signals | None = None
    ) -> None:
        """Stop the worker; the first reason is the one :meth:`.pool.Pool.on_exit` sees.

        Args:
            reason: Why, for the item it held; ``None``: its death is handled
                as if it had died by itself.
            sig: The signal to send; default SIGKILL. ``terminate_workers()``
                sends SIGTERM, which a task may ignore: a later kill (at
                shutdown's grace) still sends SIGKILL. On Windows both end
                the process alike.
        """
        if self.kill_reason is None:
            self.kill_reason = reason
        # Already exited, or closed: nothing left to stop. Both ways check
        # that the process is not reaped yet: its pid cannot be reused.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if sig is None or os.name != "posix":
                self.process.kill()
            elif self.process.exitcode is None:
                os.kill(self.process.pid, sig)


# -- outcomes -----------------------------------------------------------------


def time_limit(
    item: WorkItem, index: int
) -> tuple[float, Callable[[], BaseException]] | None:
    """The time item ``index`` of ``item`` may run, and the error past it."""
    limits: list[tuple[float, Callable[[], BaseException]]] = []
    if item.timeout is not None:
        limits.append((item.timeout, functools.partial(timeout_error, item.timeout)))
    replay = item.replay
    if replay is not None and index < replay.careful:
        limits.append((replay.budget, replay.error))
    return min(limits, key=lambda limit: limit[0]) if limits else None


def find_item(held: Iterable[WorkItem], task_id: int) -> WorkItem | None:
    for item in held:
        if item.task_id == task_id:
            return item
    return None


def drop(items: Iterable[WorkItem], error: Callable[[], BaseException]) -> None:
    """Fail the items the pool gives up on, each with its own exception.

    Call it outside the pool lock, on items no longer in any of its lists.
    """
    futures = [item.future for item in items]
    fail_futures(futures, error)
    # A queued future the caller cancelled (before, or while this ran) is
    # never dequeued: notified here, or wait() and as_completed() hang on
    # it (CPython gh-109934). Only after failing the others, so that a
    # cancel() racing with this is notified too.
    notify_cancelled(futures)


def crash_error(exitcode: int | None, kind: int) -> BaseException:
    what = "this item of a map" if kind == CHUNK else "this task"
    return WorkerCrashedError(
        f"the worker process running {what} died ({describe_exitcode(exitcode)}); "
        "the executor replaced it and runs the other tasks as usual",
        exitcode,
    )


def bad_frame_error(why: str, kind: int) -> BaseException:
    what = "this item of a map" if kind == CHUNK else "this task"
    return WorkerCrashedError(
        f"the worker process running {what} sent a bad frame on its result "
        f"pipe: {why}; the executor killed and replaced the worker and runs the "
        "other tasks as usual"
    )


def early_crash_error(exitcode: int | None, kind: int, deaths: int) -> BaseException:
    what = "the chunk of a map holding this item" if kind == CHUNK else "this task"
    times = "once" if deaths == 1 else f"{deaths} times"
    return WorkerCrashedError(
        f"a worker process died {times} while receiving {what}, before it "
        f"started (the last with {describe_exitcode(exitcode)}): its arguments "
        "are likely too large for a worker's memory (a memory limit, the OOM "
        "killer), or unpickling them kills the process; the executor replaced "
        "the worker and runs the other tasks as usual",
        exitcode,
    )


def timeout_error(seconds: float) -> BaseException:
    return TaskTimeoutError(
        f"the task ran longer than its timeout of {seconds:g} s; its worker "
        "process was stopped and replaced",
        seconds,
    )


def killed_error() -> BaseException:
    return TaskKilledError(
        "the task was stopped by kill_task(); its worker process was replaced"
    )


def interrupted_error() -> BaseException:
    return ExecutorInterruptedError.stopped("queue")


def exiting_error() -> BaseException:
    return RuntimeError("cannot schedule new futures after interpreter shutdown")


def manager_failed_error() -> BaseException:
    return ExecutorFailedError("the queue executor stopped before this task ran")
