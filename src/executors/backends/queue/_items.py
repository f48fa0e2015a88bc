"""The records the pool keeps (tasks, work items, worker handles) and its errors.

:class:`Replay` and :class:`KillReason` are what the pool remembers to blame
the right item when a worker dies (see :mod:`._triage`).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ... import _bootstrap
from ..._errors import ExecutorFailedError, WorkerCrashedError, describe_exitcode
from ..._map import ChunkResult
from ..._outcome import dumps_apart, place_apart
from ._wire import (
    CHUNK,
    CHUNK_DONE,
    ERROR,
    HEADER,
    RESULT,
    Channel,
    Message,
    Part,
    loads,
)

if TYPE_CHECKING:
    from ..._callqueue import Call
    from ..._map import Chunk

__all__ = [
    "KillReason",
    "Replay",
    "Task",
    "WorkItem",
    "WorkerHandle",
    "bad_frame_error",
    "crash_error",
    "decode_exception",
    "decode_outcome",
    "dumps_chunk",
    "early_crash_error",
    "find_item",
    "initializer_error",
    "stopped_error",
    "time_limit",
]


class Task:
    """A call's payload, the same for every attempt: its pickled frame body.

    ``body`` and ``buffers`` are kept until the call is done, to send it
    again; a chunk keeps ``fn`` and ``chunk`` to send a part of it again.
    """

    __slots__ = ("body", "buffers", "chunk", "fn", "kind", "shm_threshold", "size")

    def __init__(
        self,
        kind: int,
        body: bytes,
        buffers: list[memoryview],
        fn: Callable[..., Any] | None = None,
        chunk: Chunk | None = None,
        shm_threshold: int | None = None,
    ) -> None:
        self.kind = kind
        self.fn = fn
        self.chunk = chunk
        self.shm_threshold = shm_threshold
        self.body = body
        self.buffers = buffers
        self.size = frame_size(body, buffers)

    def placed(self) -> tuple[bytes, list[memoryview], int] | None:
        """Its body, buffers and size with the buffers in shared memory, or None.

        At launch, not submit: a queued call keeps only views of the
        caller's objects, so a long queue of large arguments costs no memory.
        Once per attempt: a retry gets the arguments as submitted, not as the
        failed attempt left them on the segment's pages.
        """
        if not self.buffers:
            return None
        body, buffers = place_apart(self.body, self.buffers, self.shm_threshold)
        if body is self.body:
            return None
        return body, buffers, frame_size(body, buffers)


def dumps_chunk(
    fn: object, chunk: Chunk, careful: int = 0, shm_threshold: int | None = None
) -> tuple[bytes, list[memoryview]]:
    """Pickle a chunk of ``map`` for :meth:`._worker._Runner.run_chunk`.

    The first ``careful`` items run one per piece.
    """
    # The worker reads the flag as "single": map(), not starmap().
    return dumps_apart((fn, chunk.items, careful, not chunk.star), shm_threshold)


def frame_size(body: bytes, buffers: list[memoryview]) -> int:
    """Bytes a frame takes in a pipe, header included."""
    size = HEADER.size + len(body)
    if buffers:
        size += sum(8 + b.nbytes for b in buffers)
    return size


class WorkItem:
    """One attempt at a task, or at a chunk of a ``map``, in the pool.

    ``task_id`` is unique within the pool: a retry is a new item, so nothing
    an earlier attempt's worker posts or sends can be taken for it. ``call``
    is ``None`` for an internal item (the rest of a crashed chunk), which
    settles ``future`` instead.
    """

    __slots__ = (
        "body",
        "buffers",
        "call",
        "early_deaths",
        "elapsed",
        "future",
        "kill",
        "replay",
        "size",
        "task",
        "task_id",
        "undecodable",
        "values",
    )

    def __init__(
        self,
        task_id: int,
        task: Task,
        call: Call | None,
        future: Future[Any] | None = None,
    ) -> None:
        self.task_id = task_id
        self.task = task
        # What its frame carries: the task's, or this attempt's placement.
        self.body, self.buffers, self.size = task.body, task.buffers, task.size
        self.call = call
        self.future = future
        self.kill = False  # stopped (timeout, kill_task): its call is settled
        self.values: list[Any] = []  # a chunk's values received so far
        self.undecodable: BaseException | None = None  # a PARTIAL that failed
        self.elapsed = 0.0
        self.replay: Replay | None = None
        # Workers that died with it posted but not started (see _triage).
        self.early_deaths = 0

    @property
    def watched(self) -> bool:
        """The manager must watch it while it runs (a kill, a replay)."""
        return self.kill or self.replay is not None


@dataclass(slots=True, eq=False)
class Replay:
    """How to find, in a rerun, the item a worker was running when killed.

    A worker killed from outside while it ran several fast items as one
    piece leaves the parent unsure which item was running. The rerun runs
    those items (the first ``careful``) one at a time; the items that had
    finished before the kill finish again within the time the whole piece
    had run, so the first that runs past ``budget`` seconds was the one
    running: it fails with ``error()``. A crash the item causes itself
    simply happens again, at that item.
    """

    budget: float
    careful: int
    error: Callable[[], BaseException]


@dataclass(slots=True, eq=False)
class KillReason:
    """Why the pool killed a worker: for which item (and item index)."""

    item: WorkItem | None
    index: int
    error: Callable[[], BaseException] | None


@dataclass(slots=True, eq=False, repr=False)
class WorkerHandle:
    """The parent's side of one worker process.

    ``tasks`` is the non-blocking write end of its task pipe, ``capacity``
    the bytes that pipe holds; ``slot`` its row on the board and key in
    ``QueuePool.workers``; ``identity`` its ``worker_id()``.

    Recycling (:mod:`._spawn`): a ``spare`` is started ahead of its
    ``predecessor``'s retirement and takes no item until that worker hands
    it its identity (``handed_over``); a ``retiring`` worker takes no more
    items; ``successor`` is its spare once registered
    (``successor_starting`` while the spare's process starts).

    ``held``: the items sent and not yet answered, oldest first. ``outbox``:
    frames of held items not yet fully written, the first possibly cut where
    the last write stopped; only the manager thread writes them, and while
    it is not empty nobody else writes to this pipe.
    """

    process: Any
    tasks: Channel
    results: Channel
    slot: int
    capacity: int
    identity: int
    predecessor: WorkerHandle | None = None
    spare: bool = False
    retiring: bool = False
    successor: WorkerHandle | None = None
    successor_starting: bool = False
    handed_over: bool = False
    held: deque[WorkItem] = field(default_factory=deque)
    held_bytes: int = 0
    outbox: deque[list[Part]] = field(default_factory=deque)
    sent: int = 0
    ready: bool = False
    eof: bool = False
    gone: bool = False
    kill_reason: KillReason | None = None

    def kill(
        self, reason: KillReason | None, sig: signal.Signals | None = None
    ) -> None:
        """Stop the worker; the first reason is the one its death is judged by.

        ``reason=None``: its death is handled as if it had died by itself.
        ``sig`` defaults to SIGKILL; ``terminate_workers()`` sends SIGTERM,
        which a task may ignore: shutdown's grace still ends in SIGKILL.
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
    """The time item ``index`` of a chunk's rerun may run, and the error past it.

    A task's own timeout is the call queue's (:meth:`._pool.QueuePool.run_left`).
    """
    replay = item.replay
    if replay is not None and index < replay.careful:
        return replay.budget, replay.error
    return None


# Decoding catches BaseException: unpickling runs any callable the pickle
# names, and a SystemExit (or any BaseException) it raises in the manager
# thread would break the whole pool. It fails only its own task.


def decode_exception(message: Message) -> BaseException:
    try:
        error = loads(message.body, message.buffers)
    except BaseException as exc:
        return exc
    if isinstance(error, BaseException):
        return error
    return RuntimeError(f"a worker sent {error!r} as an exception")


def decode_outcome(
    item: WorkItem, message: Message
) -> tuple[Any, BaseException | None]:
    """Unpickle a final message; an unpicklable result fails its task."""
    if message.kind == ERROR:
        return None, decode_exception(message)
    try:
        payload = loads(message.body, message.buffers)
    except BaseException as exc:
        return None, exc
    if message.kind == RESULT:
        return payload, None
    assert message.kind == CHUNK_DONE
    values, error = payload
    elapsed = item.elapsed + message.value
    if item.undecodable is not None:
        return ChunkResult(item.values, item.undecodable, elapsed), None
    if item.values:
        values = item.values + values
    return ChunkResult(values, error, elapsed), None


def find_item(held: Iterable[WorkItem], task_id: int) -> WorkItem | None:
    for item in held:
        if item.task_id == task_id:
            return item
    return None


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


def initializer_error(
    cause: BaseException | None, exitcode: int | None
) -> BaseException:
    return _bootstrap.initializer_error("queue", None, exitcode=exitcode, cause=cause)


def stopped_error() -> BaseException:
    return ExecutorFailedError(
        "the 'queue' executor stopped its workers before this task ran"
    )
