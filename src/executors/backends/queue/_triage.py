"""What a worker's death means for each item it held: :class:`Triage`.

Runs in the manager thread. See docs/backends/queue.md, "When a worker dies".
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..._errors import WorkerCrashedError, describe_exitcode
from ..._futures import Future as OurFuture
from ..._futures import add_internal_callback
from ..._map import Chunk, ChunkResult
from ._items import (
    KillReason,
    Replay,
    Task,
    WorkerHandle,
    WorkItem,
    bad_frame_error,
    crash_error,
    dumps_chunk,
    early_crash_error,
)
from ._pool import QueuePool
from ._spawn import STOP_GRACE_SECONDS
from ._wire import CHUNK, BadFrameError

__all__ = ["Triage"]

# Margin over the crashed piece's run time for a rerun item (see Replay), so
# that an item which had finished is not taken for the one running.
REPLAY_SLACK_SECONDS = 0.1
# Deaths before ready in a row (no initializer) that break the pool rather than loop.
STARTUP_FAILURES_BEFORE_BROKEN = 3
# Deaths before a task starts after which it fails. One is not proof (the OOM
# killer may pick any worker), but a task too large for a worker's memory
# must not kill workers for ever.
EARLY_DEATHS_BEFORE_FAILED = 2


# What an item ends with: its outcome, reported outside the pool's lock.
Outcome = tuple[WorkItem, Any, "BaseException | None"]


class Triage:
    """Settles or resends what a dead (or misbehaving) worker held."""

    def __init__(self, pool: QueuePool) -> None:
        self.pool = pool

    def on_exit(self, worker: WorkerHandle) -> None:
        """Handle the death of ``worker``: settle or resend what it held."""
        pool = self.pool
        self._drain(worker)
        process = worker.process
        process.join(STOP_GRACE_SECONDS)
        exitcode = process.exitcode
        posted = pool.board.read(worker.slot)
        # Read: it no longer counts as running or polling for the others.
        pool.board.clear(worker.slot)
        settled: list[Outcome] = []
        with pool.lock:
            worker.gone = True
            if pool.workers.get(worker.slot) is worker:
                del pool.workers[worker.slot]
                pool.free_slots.append(worker.slot)
            pool.spawner.hand_over_locked(worker)
            held = [item for item in worker.held if not item.kill]
            pool.watched -= sum(1 for item in worker.held if item.watched)
            worker.held.clear()
            worker.held_bytes = 0
            worker.outbox.clear()
            if pool.ended or (not held and worker.ready):
                redo: list[WorkItem] = []
            elif not worker.ready:
                redo = held
            else:
                redo = self._sort_out_locked(worker, held, posted, exitcode, settled)
            pool.pending.extendleft(reversed(redo))
        if not pool.ended and not worker.ready and worker.kill_reason is None:
            self._startup_failed(exitcode)
        for item, value, error in settled:
            pool.finish(item, value, error)
        pool.spawner.close(worker)
        # A retired worker is replaced when work waits; a crashed or killed
        # one at once, to keep the pool's size.
        pool.after_exit(
            replace=bool(held) or worker.kill_reason is not None or exitcode != 0
        )

    def on_bad_frame(self, worker: WorkerHandle, why: BadFrameError) -> None:
        """Handle a frame ``worker`` did not send: fail one task, replace it.

        Frames arrive in order, so the oldest item it holds was running when
        the bytes were written: it fails. Called once the manager stopped
        reading the worker.
        """
        pool = self.pool
        settled: list[Outcome] = []
        task_id, first = pool.board.read(worker.slot)[:2]
        with pool.lock:
            item = worker.held[0] if worker.held and worker.ready else None
            if item is not None:
                worker.held.popleft()
                worker.held_bytes -= item.size
                if item.watched:
                    pool.watched -= 1
                error = bad_frame_error(str(why), item.task.kind)
                if item.task.kind != CHUNK:
                    settled.append((item, None, error))
                else:
                    # At the piece the board shows running, if it is this
                    # chunk's; else after the values already received.
                    stop = first if task_id == item.task_id else len(item.values)
                    recovery = self._finish_chunk_locked(item, stop, error, 0, settled)
                    if recovery is not None:
                        pool.pending.appendleft(recovery)
        if worker.ready:
            # The rest it held is sent again (on_exit: killed for no item).
            worker.kill(_NO_ITEM)
        elif pool.initializer is not None:
            # Only the initializer has run in it.
            pool.initializer_failed(why, None)
        else:
            worker.kill(None)  # counted as a worker that failed to start
        for done, value, failure in settled:
            pool.finish(done, value, failure)

    def _sort_out_locked(
        self,
        worker: WorkerHandle,
        held: list[WorkItem],
        posted: tuple[int, int, int, int],
        exitcode: int | None,
        settled: list[Outcome],
    ) -> list[WorkItem]:
        """Decide what each item a dead worker held becomes.

        The victim is the item the board shows running (or the one the pool
        killed it for); every other item had not started and is sent again.
        """
        task_id, first, end, started = posted
        reason = worker.kill_reason
        redo: list[WorkItem] = []
        for item in held:
            kind = item.task.kind
            if item.task_id != task_id:
                redo.append(item)
                continue
            if reason is None and started == 0:
                # Died before the task started (see EARLY_DEATHS_BEFORE_FAILED).
                item.early_deaths += 1
                if item.early_deaths < EARLY_DEATHS_BEFORE_FAILED:
                    redo.append(item)
                    continue
                error = early_crash_error(exitcode, kind, item.early_deaths)
                if kind != CHUNK:
                    settled.append((item, None, error))
                else:
                    self._finish_chunk_locked(item, 0, error, 0, settled)
                continue
            aimed = None
            if reason is not None and reason.item is item:
                aimed = reason.error  # the error it was killed with
            if kind != CHUNK:
                if reason is not None:
                    # Killed for another item (or to stop the pool) as it began.
                    redo.append(item)
                else:
                    settled.append((item, None, crash_error(exitcode, kind)))
                continue
            size = len(item.task.chunk or ())
            careful = 0
            replay = None
            chunk_error: BaseException | None = None
            if reason is None and end - first <= 1:
                stop, chunk_error = first, crash_error(exitcode, kind)
            elif reason is None:
                # Several fast items ran as one piece: find the culprit (Replay).
                stop, careful = size, end
                ran = (
                    max(0, time.monotonic_ns() - started) / 1e9 if started > 0 else 0.0
                )
                budget = max(2 * ran, ran + REPLAY_SLACK_SECONDS)
                replay = (budget, functools.partial(crash_error, exitcode, CHUNK))
            elif aimed is not None and reason is not None and reason.index == first:
                stop, chunk_error = first, aimed()
            else:
                stop = size  # not this chunk's fault: run the rest again
            recovery = self._finish_chunk_locked(
                item, stop, chunk_error, careful, settled, replay
            )
            if recovery is not None:
                redo.insert(0, recovery)
        return redo

    def _finish_chunk_locked(
        self,
        item: WorkItem,
        stop: int,
        error: BaseException | None,
        careful: int,
        settled: list[Outcome],
        replay: tuple[float, Callable[[], BaseException]] | None = None,
    ) -> WorkItem | None:
        """End a chunk at item ``stop`` with ``error``.

        Items whose values died with the worker rerun as an internal chunk
        that completes this one, those before ``careful`` one per piece.
        """
        task = item.task
        chunk = task.chunk or Chunk([], star=False)
        have = len(item.values)
        if item.undecodable is not None:
            stop, error = have, item.undecodable
        if have >= stop:
            result = ChunkResult(item.values[:stop], error, item.elapsed)
            settled.append((item, result, None))
            return None
        rest = chunk[have:stop]
        careful = max(0, careful - have)
        try:
            body, buffers = dumps_chunk(task.fn, rest, careful, self.pool.shm_threshold)
        except Exception as exc:
            settled.append((item, None, exc))
            return None
        future: OurFuture[ChunkResult] = OurFuture()
        recovery = WorkItem(
            next(self.pool.ids),
            Task(CHUNK, body, buffers, task.fn, rest),
            None,
            future,
        )
        if replay is not None and careful:
            recovery.replay = Replay(replay[0], careful, replay[1])
        # Internal: it must never wait behind users' callbacks.
        add_internal_callback(
            future,
            functools.partial(_complete_recovered, self.pool, item, error),
        )
        return recovery

    def _drain(self, worker: WorkerHandle) -> None:
        # What a worker wrote before it died is still in its pipe.
        if worker.eof:
            return
        ready = worker.results.poller()
        while ready(0):
            try:
                message = worker.results.recv()
            except (EOFError, OSError, BadFrameError):
                # A bad frame from a dead worker: its death fails the task.
                break
            self.pool.on_message(worker, message)
        worker.eof = True

    def _startup_failed(self, exitcode: int | None) -> None:
        pool = self.pool
        if pool.initializer is not None:
            pool.initializer_failed(None, exitcode)
            return
        with pool.lock:
            pool.startup_failures += 1
            if pool.startup_failures < STARTUP_FAILURES_BEFORE_BROKEN:
                return
        text = describe_exitcode(exitcode)
        pool.break_pool(
            lambda: WorkerCrashedError(
                f"{STARTUP_FAILURES_BEFORE_BROKEN} worker processes in a row died "
                f"while starting (the last with {text}); the executor is broken",
                exitcode,
            )
        )


def _complete_recovered(
    pool: QueuePool, item: WorkItem, error: BaseException | None, recovery: Future[Any]
) -> None:
    try:
        rest: ChunkResult = recovery.result()
    except BaseException as exc:
        pool.finish(item, None, exc)
        return
    final = rest.error if rest.error is not None else error
    values = item.values + rest.values
    pool.finish(item, ChunkResult(values, final, item.elapsed + rest.elapsed), None)


# Killed on purpose, for no item of its own.
_NO_ITEM = KillReason(None, 0, None)
