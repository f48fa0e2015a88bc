"""The loop a worker process runs: :func:`run_worker`.

See docs/backends/queue.md, "When a worker dies" and "Shutdown, exit and orphans".
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from itertools import starmap
from multiprocessing.connection import Connection
from typing import Any

from ... import _shm
from ..._outcome import PICKED, dumps_apart, place_apart
from ..._parentwatch import exit_with_parent
from ..._remote import picklable_exception, result_not_sent
from ..._serialize import unwrap
from ..._workers._context import WorkerSpec, after_task, recycling
from ._board import END, FIELDS, ITEM, POLLING, RETURNED, SENT, STARTED, TASK, Board
from ._polling import PollPolicy, poll_for
from ._wire import (
    CALL,
    CHUNK_DONE,
    ERROR,
    INIT_FAILED,
    LEAVING,
    PARTIAL,
    POLL_AFTER,
    READY,
    RESULT,
    SOON,
    Channel,
    Message,
    loads,
)

__all__ = ["FLUSH_SECONDS", "run_worker"]

# A chunk sends its values so far this often: it bounds the work repeated
# after a crash; shorter costs a message per interval on longer chunks.
FLUSH_SECONDS = 0.01
# Pieces grow while shorter than this: they stay well under FLUSH_SECONDS,
# and an item this slow always runs alone.
PIECE_SECONDS = FLUSH_SECONDS / 4
# How long a leaving worker waits for the parent to take its last result's
# shared memory: only a stalled parent takes long.
LAST_RESULT_SECONDS = 30.0


def run_worker(
    tasks: Connection,
    results: Connection,
    board: Board,
    slot: int,
    identity: int,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    max_tasks: int | None,
    caller: int,
    close_fds: Sequence[int],
    shm_threshold: int | None = None,
    worker: WorkerSpec | None = None,
) -> None:
    """The entry point of a worker process.

    Args:
        identity: Its ``worker_id()``: the one of the worker it replaces.
        caller: The pid of the pool's owner (not this worker's parent under
            forkserver): the worker exits when it ends.
        close_fds: The parent's other pipes, inherited by fork, to close.
        worker: Identity, state, thread caps, logs and finalizer
            (:mod:`executors._workers`).
    """
    # Before this process opens a descriptor of its own: the numbers name
    # the parent's pipes as they were when it forked.
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    # From the start: end-of-file alone would not end a busy orphan.
    exit_with_parent(caller)
    if worker is not None:
        # Before the initializer: it may fill worker_state(), and the
        # libraries it imports see the thread caps.
        worker.start(index=identity)
    # Ctrl-C reaches the whole process group: the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inbox, outbox = Channel(tasks), Channel(results)
    # The parent reads only what this worker posts it sends (wire.SENT).
    outbox.post_sent_to(board.view, slot * FIELDS + SENT)
    try:
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as exc:
                _send_exception(outbox, INIT_FAILED, 0, exc, 0.0)
                return
        outbox.send(READY, 0)
        _Runner(inbox, outbox, board, slot, shm_threshold).serve(max_tasks)
    except OSError:
        # The parent is gone (broken pipe): nobody is left to report to.
        return


class _Runner:
    """Runs the tasks that arrive on ``inbox``, reports on ``outbox``."""

    def __init__(
        self,
        inbox: Channel,
        outbox: Channel,
        board: Board,
        slot: int,
        shm_threshold: int | None,
    ) -> None:
        self.inbox = inbox
        self.outbox = outbox
        self.board, self.slot = board, slot
        self.polling = PollPolicy()
        self.view = board.view
        self.base = slot * FIELDS
        self.shm_threshold = shm_threshold

    def serve(self, max_tasks: int | None) -> None:
        done = 0
        told_soon = False
        # After a round trip's task (POLL_AFTER), it polls its task pipe
        # before it sleeps: the next comes within tens of µs. Only while the
        # other workers running or polling leave a CPU to the parent. Posted
        # on the board from the task's start, so that the manager does not
        # poll beside it (docs/backends/queue.md, "Inside").
        polling, ready = self.polling, self.inbox.poller()
        view, flag, monotonic = self.view, self.base + POLLING, time.monotonic
        poll_next = False
        while max_tasks is None or done < max_tasks:
            began, window = monotonic(), 0.0
            if poll_next:
                window = polling.seconds
                poll_for(ready, window)
                view[flag] = 0
            try:
                message = self.inbox.recv(self._announce)
            except EOFError:
                return
            polling.waited(monotonic() - began, window)
            poll_next = self.polls_after(message)
            if poll_next:
                view[flag] = 1
            if message.kind == CALL:
                self.run_call(message)
            else:
                self.run_chunk(message)
            del message  # free the arguments while idle
            done += 1
            leaving, soon = recycling()
            if soon and not told_soon:
                told_soon = True
                self.outbox.send(SOON, 0)
            if leaving:
                self.outbox.send(LEAVING, 0)
                break
        view[flag] = 0  # it polls no more, and may wait below
        # The parent opens a result's shared memory through this process:
        # it must not be gone before the parent has taken its last one.
        _shm.wait_picked(LAST_RESULT_SECONDS)

    def polls_after(self, message: Message) -> bool:
        """Whether to poll for the next task once ``message``'s is done."""
        polling = self.polling
        # A CPU for this worker and one for the parent, besides the others'.
        return (
            message.value == POLL_AFTER
            and self.board.busy_besides(self.slot) <= polling.cpus - 2
            and polling.worth_polling()
        )

    def _announce(self, task_id: int) -> None:
        """Post a task whose header has arrived, before its body is read.

        Task id last: a live reader that sees the id sees its fields. STARTED
        stays 0 until unpickling is done: a timeout counts only the run, and
        a death before it is told apart (``Triage._sort_out_locked``).
        """
        view, base = self.view, self.base
        view[base + ITEM] = 0
        view[base + END] = 0
        view[base + STARTED] = 0
        view[base + TASK] = task_id

    def run_call(self, message: Message) -> None:
        start = time.perf_counter()
        view, started = self.view, self.base + STARTED
        try:
            fn, args, kwargs = loads(message.body, message.buffers)
            view[started] = time.monotonic_ns()
            value = fn(*args, **kwargs)
        except BaseException as exc:
            if view[started]:
                view[started] = RETURNED
            after_task()
            _send_exception(
                self.outbox, ERROR, message.task_id, exc, time.perf_counter() - start
            )
            return
        # The timeout stops here: sending the result is not the task's run.
        view[started] = RETURNED
        # The task's log records reach the caller before its outcome.
        after_task()
        elapsed = time.perf_counter() - start
        try:
            body, buffers = _dumps_outcome(value, self.shm_threshold)
        except BaseException as exc:
            # The pickling error is this task's error, as with the stdlib,
            # marked as a result that could not be sent.
            body, buffers = dumps_apart(result_not_sent(exc, value))
            self.outbox.send(ERROR, message.task_id, elapsed, body, buffers)
            return
        self.outbox.send(RESULT, message.task_id, elapsed, body, buffers)

    def run_chunk(self, message: Message) -> None:
        """Run a chunk in pieces, each one C-level ``starmap`` over a slice.

        Pieces double while under ``PIECE_SECONDS``, so slow items (the ones
        a kill is aimed at) run alone and the board names them; the first
        ``careful`` items (a rerun's) run one per piece. Each piece's posted
        start times a rerun's items and a dead worker's last piece.
        """
        start = time.perf_counter()
        task_id = message.task_id
        values: list[Any] = []
        error: BaseException | None = None
        view, base = self.view, self.base
        perf_counter, monotonic_ns = time.perf_counter, time.monotonic_ns
        flush_at = start + FLUSH_SECONDS
        index = 0
        try:
            fn, chunk, careful, single = loads(message.body, message.buffers)
            # Done travelling by value; calling through it would cost a frame per item.
            fn = unwrap(fn)
            apply = map if single else starmap
            size = len(chunk)
            step = 1
            while index < size:
                end = index + 1 if index < careful else min(size, index + step)
                view[base + STARTED] = monotonic_ns()
                view[base + END] = end
                view[base + ITEM] = index
                begun = perf_counter()
                values.extend(apply(fn, chunk[index:end]))
                now = perf_counter()
                index = end
                took = now - begun
                if took < PIECE_SECONDS:
                    step *= 2
                elif took > FLUSH_SECONDS and step > 1:
                    step //= 2
                if now >= flush_at:
                    # The items so far have returned: sending their values
                    # counts against no item's timeout.
                    view[base + STARTED] = RETURNED
                    if not self._flush(task_id, values):
                        return
                    values = []
                    flush_at = perf_counter() + FLUSH_SECONDS
        except BaseException as exc:
            # extend() keeps the values the piece made before the failure.
            error = exc
        if view[base + STARTED]:
            view[base + STARTED] = RETURNED
        after_task()
        self._send_values(
            CHUNK_DONE, task_id, values, error, time.perf_counter() - start
        )

    def _flush(self, task_id: int, values: list[Any]) -> bool:
        """Send the values so far; False if one of them cannot be sent."""
        return self._send_values(PARTIAL, task_id, values, None, 0.0)

    def _send_values(
        self,
        kind: int,
        task_id: int,
        values: list[Any],
        error: BaseException | None,
        elapsed: float,
    ) -> bool:
        try:
            if kind == PARTIAL:
                body, buffers = _dumps_outcome(values, self.shm_threshold)
            else:
                carrier = None if error is None else picklable_exception(error)
                body, buffers = _dumps_outcome((values, carrier), self.shm_threshold)
        except BaseException as exc:
            cause = exc
        else:
            self.outbox.send(kind, task_id, elapsed, body, buffers)
            return True
        # A value that does not pickle ends the chunk at its position, as a
        # task error there would: find it, send what comes before it.
        good = 0
        carrier = None
        for value in values:
            try:
                dumps_apart(value)
            except BaseException as exc:
                carrier = result_not_sent(exc, value)
                break
            good += 1
        if carrier is None:
            carrier = picklable_exception(cause)
        body, buffers = dumps_apart((values[:good], carrier))
        self.outbox.send(CHUNK_DONE, task_id, elapsed, body, buffers)
        return False


def _send_exception(
    outbox: Channel, kind: int, task_id: int, exc: BaseException, elapsed: float
) -> None:
    try:
        body, buffers = dumps_apart(picklable_exception(exc))
    except BaseException as why:
        # picklable_exception already replaces unpicklable exceptions; this
        # is the last resort for one whose traceback text cannot be built.
        substitute = RuntimeError(
            f"the task raised {type(exc).__qualname__}, which cannot be sent "
            f"back to the caller ({why!r})"
        )
        body, buffers = dumps_apart(picklable_exception(substitute))
    outbox.send(kind, task_id, elapsed, body, buffers)


def _dumps_outcome(
    obj: object, shm_threshold: int | None
) -> tuple[bytes, list[memoryview]]:
    """Pickle a message to the parent, its large buffers in shared memory.

    Sent once: the segment is free again once the parent has taken it.
    """
    body, buffers = dumps_apart(obj, shm_threshold)
    return place_apart(body, buffers, shm_threshold, PICKED)
