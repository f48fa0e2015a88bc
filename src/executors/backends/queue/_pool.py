"""The state the callers and the manager thread share: :class:`Pool`.

The pool owns the call queue (items no worker has yet), the worker handles
and the policy: which worker gets which item, when to start or replace a
worker, and what a worker's death means for each item it held (see
:meth:`Pool.on_exit`). Everything is guarded by one lock; futures are
settled outside it (:func:`executors._futures.settle`): the users'
done-callbacks run on the callback thread, but the project's own (``map``'s
bookkeeping, the rest of a crashed chunk) run in the settling thread, and
may submit.

Callers dispatch their own work: ``submit`` pickles in the calling thread and
writes straight to an idle worker's pipe, so the only thread hop of a task is
the manager setting its result.

Writing to a worker (the invariants the transport rests on):

* Every write to a task pipe happens under ``lock`` and is non-blocking
  (:meth:`.wire.Channel.send_nowait`): it takes what the pipe holds now and
  returns. No byte count can promise a blocking write will not block (a
  pipe fills by pages: two 2.6 KB frames take two 4 KiB pages), and a
  blocked write under the lock would stop the manager, which needs the lock
  to handle any result: every future would hang.
* A caller writes a frame only while the worker's ``outbox`` is empty, with
  one non-blocking system call. What does not fit goes to the ``outbox``;
  from then on only the manager thread writes to that pipe, as it becomes
  writable, frames in order, until the ``outbox`` is empty again. The
  manager is never the main thread, so no ``KeyboardInterrupt`` (or other
  signal handler's exception) can stop it in the middle of a frame.
* If such an exception lands in a caller between recording an item as held
  and recording what its write did, whether a frame is whole in the pipe is
  unknown: the worker is killed and replaced, and what it held is sent
  again (:meth:`Pool._send_locked`). A worker never waits for the rest of a
  frame nobody will write.
* A worker that dies with a frame half written takes the rest of the
  ``outbox`` with it: its held items are settled or sent again from the
  board, as for any death (:meth:`Pool.on_exit`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import select
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

from ..._control import TaskOptions, record_attempts, timer
from ..._errors import (
    ExecutorFailedError,
    InitializerFailedError,
    TaskKilledError,
    WorkerCrashedError,
    describe_exitcode,
)
from ..._futures import Future as OurFuture
from ..._futures import add_internal_callback, notify_cancelled, settle
from ..._lifecycle import (
    close_at_exit,
    ending_on_keyboard_interrupt,
    interpreter_exiting,
    join_unless_current,
)
from ..._map import Chunk, ChunkResult
from ._items import (
    KillReason,
    Replay,
    WorkerHandle,
    WorkItem,
    bad_frame_error,
    crash_error,
    drop,
    early_crash_error,
    exiting_error,
    find_item,
    interrupted_error,
    killed_error,
    manager_failed_error,
    time_limit,
)
from ._manager import Manager, Wakeup
from ._wire import (
    CHUNK,
    CHUNK_DONE,
    ERROR,
    FIELDS,
    INIT_FAILED,
    PARTIAL,
    READY,
    RESULT,
    SENT,
    BadFrameError,
    Board,
    Channel,
    Message,
    dumps_chunk,
    frame,
    loads,
)
from ._worker import run_worker

__all__ = ["Pool"]

# -- tunables ---------------------------------------------------------------

# A busy worker is sent more items ahead of its answers, so that it starts
# the next one without waiting for a round trip through the manager thread
# (a wake-up can take a millisecond on a loaded machine). Items sent ahead
# can no longer be cancelled and may wait behind a long task while another
# worker idles, so the pool sends ahead only about AHEAD_SECONDS of work,
# judged by the average task so far: none for tasks that long, one before
# any task has finished, at most MAX_TASKS_AHEAD for tiny ones.
AHEAD_SECONDS = 0.02
MAX_TASKS_AHEAD = 8
# A worker that is busy (or still starting) is sent an item only if the
# item, with everything it holds, fits in its task pipe by the byte count:
# more would wait in the parent anyway, where it can still be cancelled or
# go to another worker. (Writes never block whatever the count says: see
# "Writing to a worker" above.) Linux pipes are grown to this size (they
# hold 64 KiB by default, 8 KiB once a user has many pipes open), so a chunk
# of a map can wait in the pipe while the previous one runs, and a large
# argument crosses in fewer wake-ups. The kernel allocates the pages only
# as data flows: an idle pipe costs nothing.
PIPE_BYTES = 1024 * 1024
# What a pipe is assumed to hold where its size cannot be read (macOS pipes
# start at 16 KiB).
MIN_PIPE_BYTES = 16 * 1024
# How often the manager looks at a worker whose running task may time out
# but whose start it has not seen yet. Bounds how late a timeout fires.
TIMEOUT_POLL_SECONDS = 0.01
# A rerun after an ambiguous crash (see Replay) gives each item at least this
# long beyond the time the crashed piece had run: items that finished before
# the crash must not be mistaken for the one that was running.
REPLAY_SLACK_SECONDS = 0.1
# At shutdown idle workers exit at once on end-of-file; one that has not
# exited after this long (stuck in its initializer) is killed.
STOP_GRACE_SECONDS = 3.0
# Without an initializer, a worker that dies before it is ready (killed while
# starting) is replaced; this many in a row mean workers cannot start at all
# (a broken environment), and the pool is broken instead of looping.
STARTUP_FAILURES_BEFORE_BROKEN = 3
# A task whose worker dies after receiving its header but before the task
# starts (while its frame is read or its arguments unpickled) is sent again
# until this many workers have died so; then it fails. Once is not proof:
# the OOM killer may pick a worker for memory others use. But a task too
# large for a worker's memory kills every worker it reaches, and sending it
# again without a bound starts and kills workers for ever.
EARLY_DEATHS_BEFORE_FAILED = 2

# Linux fcntl commands (the fcntl module names them from Python 3.10 only).
_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032


class Pool:
    """Everything the callers and the manager share, under ``lock``.

    Args:
        ctx: The multiprocessing context workers start with.
        max_workers: The most workers alive at once.
        initializer: Run by each worker before its first task.
        initargs: Arguments for ``initializer``.
        max_tasks_per_child: Replace a worker after this many tasks.
        owner: The executor; held weakly, so that dropping the executor
            without shutting it down still stops the pool.
    """

    def __init__(
        self,
        ctx: BaseContext,
        max_workers: int,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        max_tasks_per_child: int | None,
        owner: object,
    ) -> None:
        self.ctx = ctx
        self.max_workers = max_workers
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks = max_tasks_per_child
        self.fork = ctx.get_start_method() == "fork"
        if ctx.get_start_method() == "forkserver":
            _preload_in_forkserver(ctx)
        self.lock = threading.Lock()
        # Held across starting a process and registering it, so that a
        # forked worker learns every pipe of its siblings (to close them).
        self.spawn_lock = threading.Lock()
        self.wakeup = Wakeup()
        wakeup = self.wakeup
        self.owner = weakref.ref(owner, lambda _: wakeup.wake())
        self.board = Board(max_workers, ctx)
        self.pending: deque[WorkItem] = deque()
        self.workers: dict[int, WorkerHandle] = {}
        self.free_slots = list(range(max_workers - 1, -1, -1))
        self.starting = 0
        self.generation = 0  # bumped when a worker is registered
        self.ids = itertools.count(1)
        self.by_future: dict[Future[Any], WorkItem] = {}
        # Tasks waiting out their retry_delay, with their timer entries: in
        # no queue and no worker, but not done (see retry_locked).
        self.delayed: dict[WorkItem, Any] = {}
        # Workers whose outbox became non-empty, for the manager to watch
        # their task pipe until it has written everything.
        self.unflushed: list[WorkerHandle] = []
        self.watched = 0  # held items with a timeout or a kill request
        # Moving average of task durations; None until a task has finished.
        self.task_seconds: float | None = None
        self.startup_failures = 0
        self.broken: Callable[[], BaseException] | None = None
        self.closing = False
        self.interrupted = False  # no more replacements: Ctrl-C
        self.stopped = False
        self.manager: Manager | None = None

    # -- called by the executor ----------------------------------------------

    def submit(
        self,
        kind: int,
        future: Future[Any],
        body: bytes,
        buffers: list[memoryview],
        timeout: float | None,
        fn: Callable[..., Any] | None = None,
        chunk: Chunk | None = None,
        options: TaskOptions | None = None,
    ) -> None:
        """Queue one item and send it to a worker if one can take it now.

        ``options`` (a task's retries) only for a single task, not a chunk.
        """
        with self.lock:
            if self.broken is not None:
                raise self.broken()
            if self.stopped or interpreter_exiting():
                # The executor's own guards run first; this is the window
                # after the interpreter began to exit.
                raise exiting_error()
            item = WorkItem(
                next(self.ids),
                kind,
                future,
                body,
                buffers,
                timeout,
                fn,
                chunk,
                options=options,
            )
            if kind != CHUNK:
                self.by_future[future] = item
            self.pending.append(item)
            if self.manager is None:
                self.manager = Manager(self)
                self.manager.start()
                close_at_exit(self)
            self._dispatch_locked()
            slot = self._reserve_spawn_locked()
        if slot is not None:
            self._spawn(slot)

    def kill_task(self, future: Future[Any]) -> bool:
        """Stop the task of ``future``; see ``QueueExecutor.kill_task``."""
        with self.lock:
            item = self.by_future.get(future)
            if item is None or future.done():
                return False
            started = item.started
            waiting = started and (item in self.delayed or item in self.pending)
            if waiting:
                # Sent again after a crash, or waiting to be retried, and
                # not yet resent: it never runs again.
                self._undelay_locked(item)
                if item in self.pending:
                    self.pending.remove(item)
                del self.by_future[future]
            elif started and not item.kill:
                if not item.watched:
                    self.watched += 1
                item.kill = True
        # Outside the lock: cancel() runs the done-callbacks in this thread.
        if not started:
            return future.cancel()
        if waiting:
            settle(future, error=killed_error())
        else:
            self.wakeup.wake()
        return True

    def close(self, cancel_futures: bool) -> None:
        """Start shutting down; with ``cancel_futures``, cancel the queue."""
        cancelled: list[Future[Any]] = []
        with self.lock:
            self.closing = True
            if cancel_futures:
                keep = deque(i for i in self.pending if i.started or i.internal)
                for item in self.pending:
                    if not (item.started or item.internal):
                        cancelled.append(item.future)
                        self.by_future.pop(item.future, None)
                self.pending = keep
        self.wakeup.wake()
        for future in cancelled:
            future.cancel()
        # The pool will never dequeue them: wake wait() and as_completed().
        notify_cancelled(cancelled)

    def join(self) -> None:
        join_unless_current(self.manager)

    def close_at_exit(self) -> None:
        """At interpreter exit: finish the work, unless Ctrl-C ended the program.

        The pool takes part in the exit hook itself, not only through its
        executor: an executor dropped without ``shutdown()`` is collected
        while its manager still finishes the work submitted to it, and that
        work must complete before the interpreter ends.

        A program ended by an unhandled ``KeyboardInterrupt``, or interrupted
        again while this waits, stops instead, as a ``with`` block leaving on
        Ctrl-C does: the running tasks (which may run for minutes) fail with
        :class:`~executors.TaskKilledError` and the queue is cancelled.
        """
        if not ending_on_keyboard_interrupt():
            try:
                self.close(cancel_futures=False)
                self.join()
                return
            except KeyboardInterrupt:
                pass
        self.interrupt()
        self.close(cancel_futures=True)
        self.join()

    # -- dispatch ------------------------------------------------------------

    def _dispatch_locked(self) -> None:
        pending = self.pending
        while pending:
            item = pending[0]
            worker = self._pick_worker_locked(item)
            if worker is None:
                return
            if not item.started:
                # Marked first: an exception landing between the two must
                # not make the next dispatch set the future running again.
                item.started = True
                if not item.future.set_running_or_notify_cancel():
                    pending.popleft()
                    self.by_future.pop(item.future, None)
                    continue
            self._send_locked(worker, item)

    def _pick_worker_locked(self, item: WorkItem) -> WorkerHandle | None:
        size = item.size
        seconds = self.task_seconds
        if seconds is None:
            ahead = 1
        elif seconds >= AHEAD_SECONDS:
            ahead = 0
        else:
            ahead = min(MAX_TASKS_AHEAD, int(AHEAD_SECONDS / max(seconds, 1e-6)))
        busy: WorkerHandle | None = None
        unready: WorkerHandle | None = None
        any_ready = any_unready = False
        for worker in self.workers.values():
            if worker.kill_reason is not None or (
                self.max_tasks is not None and worker.sent >= self.max_tasks
            ):
                continue
            held = len(worker.held)
            if worker.ready:
                any_ready = True
                if held == 0:
                    return worker
                if (
                    held <= ahead
                    and not worker.outbox
                    and worker.held_bytes + size <= worker.capacity
                    and (busy is None or held < len(busy.held))
                ):
                    busy = worker
            else:
                any_unready = True
                if held == 0 and size <= worker.capacity and unready is None:
                    unready = worker
        if unready is not None and not any_ready:
            # The pool is starting: the item waits in the pipe of a worker
            # that is still importing, and runs the moment it is ready.
            return unready
        # Send ahead only to a full pool of ready workers: while a worker is
        # starting, or the pool can grow, the item may run sooner there.
        if (
            busy is not None
            and not any_unready
            and not self.free_slots
            and self.starting == 0
        ):
            return busy
        return None

    def _send_locked(self, worker: WorkerHandle, item: WorkItem) -> None:
        """Move ``item`` (``pending[0]``) to ``worker`` and write its frame.

        Never blocks: see "Writing to a worker" at the top of this module.
        """
        try:
            # Held before it leaves the queue: it is always in one of them.
            worker.held.append(item)
            self.pending.popleft()
            worker.held_bytes += item.size
            worker.sent += 1
            if item.watched:
                self.watched += 1
            timeout = item.timeout or 0.0
            if worker.outbox:
                # The manager is writing an earlier frame: queue behind it.
                worker.outbox.append(
                    frame(item.kind, item.task_id, timeout, item.body, item.buffers)
                )
            else:
                rest = worker.tasks.send_nowait(
                    item.kind, item.task_id, timeout, item.body, item.buffers
                )
                if rest is not None:
                    # The pipe is full: the manager writes the rest.
                    worker.outbox.append(rest)
                    self.unflushed.append(worker)
                    self.wakeup.wake()
        except OSError:
            pass  # dead: handling its death sends the item again
        except BaseException:
            # KeyboardInterrupt, or a signal handler's exception, in the
            # caller's thread: what reached the pipe is unknown, and a
            # worker waiting for the rest of a frame would wait for ever.
            # Replace it; what it held is sent again (or settled).
            if item in worker.held:
                if self.pending and self.pending[0] is item:
                    self.pending.popleft()
                worker.kill(KillReason(None, 0, None))
            raise
        if item.watched:
            self.wakeup.wake()

    def take_unflushed(self) -> list[WorkerHandle]:
        """The workers the manager must now watch for room in their pipe."""
        with self.lock:
            workers, self.unflushed = self.unflushed, []
        return workers

    def flush(self, worker: WorkerHandle) -> bool:
        """Write ``worker``'s outbox as far as its pipe takes it (manager).

        Returns:
            True once the outbox is empty (the manager stops watching).
        """
        with self.lock:
            outbox = worker.outbox
            try:
                while outbox:
                    if not worker.tasks.write_nowait(outbox[0]):
                        return False
                    outbox.popleft()
            except OSError:
                # Dead: its exit settles or resends what it held.
                outbox.clear()
            return True

    # -- workers: start, register -------------------------------------------

    def _reserve_spawn_locked(self, replace: bool = False) -> int | None:
        if (
            self.broken is not None
            or self.stopped
            or self.interrupted
            or not self.free_slots
        ):
            return None
        if replace:
            if self.closing and not self.pending:
                return None
        elif len(self.pending) <= self.starting:
            # Each worker already starting will take a queued item.
            return None
        self.starting += 1
        return self.free_slots.pop()

    def _spawn(self, slot: int) -> None:
        with self.spawn_lock:
            try:
                worker = self._start_process(slot)
            except BaseException as exc:
                with self.lock:
                    self.starting -= 1
                    self.free_slots.append(slot)
                    alive = bool(self.workers)
                if not alive:
                    reason = f"{type(exc).__name__}: {exc}"
                    self.break_pool(
                        lambda: ExecutorFailedError(
                            f"the queue executor could not start a worker ({reason})"
                        )
                    )
                self.wakeup.wake()
                return
            with self.lock:
                self.starting -= 1
                # Stopped, or its workers ended (Ctrl-C, terminate_workers())
                # while this one started: it must take no work.
                late = self.stopped or self.interrupted
                if not late:
                    self.workers[slot] = worker
                    self.generation += 1
                    self._dispatch_locked()
            if late:
                # The pool stopped while this worker started: never leave it.
                worker.kill(KillReason(None, 0, None))
                worker.process.join()
                _close_quietly(worker)
        # Also when it came late: a stopping manager waits for `starting`
        # to reach zero, and nothing else would wake it to see that.
        self.wakeup.wake()

    def _start_process(self, slot: int) -> WorkerHandle:
        task_reader, task_writer = self.ctx.Pipe(duplex=False)
        result_reader, result_writer = self.ctx.Pipe(duplex=False)
        close_fds: list[int] = []
        if self.fork:
            with self.lock:
                for other in self.workers.values():
                    close_fds += [other.tasks.fileno(), other.results.fileno()]
            # ...and the parent's ends of its own pipes, or its own task
            # pipe would never reach end-of-file.
            close_fds += [
                self.wakeup.reader.fileno(),
                task_writer.fileno(),
                result_reader.fileno(),
            ]
            own = {task_reader.fileno(), result_writer.fileno()}
            close_fds = [fd for fd in close_fds if fd not in own]
        self.board.clear(slot)
        process = self.ctx.Process(  # type: ignore[attr-defined]
            target=run_worker,
            args=(
                task_reader,
                result_writer,
                self.board,
                slot,
                self.initializer,
                self.initargs,
                self.max_tasks,
                os.getpid(),
                close_fds,
            ),
            name=f"executors-queue-worker-{slot}",
        )
        try:
            process.start()
        finally:
            # Only the worker keeps these ends: its death is then an
            # end-of-file here, and the parent's death one there.
            task_reader.close()
            result_writer.close()
        capacity = _grow_pipe(task_writer)
        _grow_pipe(result_reader)
        tasks, results = Channel(task_writer), Channel(result_reader)
        tasks.make_nonblocking()
        results.check_against(self.board.view, slot * FIELDS + SENT)
        return WorkerHandle(process, tasks, results, slot, capacity)

    # -- results (manager thread) --------------------------------------------

    def on_message(self, worker: WorkerHandle, message: Message) -> None:
        """Handle one message from ``worker``."""
        kind = message.kind
        if kind == READY:
            with self.lock:
                worker.ready = True
                self.startup_failures = 0
                self._dispatch_locked()
            return
        if kind == INIT_FAILED:
            self._initializer_failed(_decode_exception(message), None)
            return
        held = worker.held
        # held[0] without the lock: deque indexing is atomic, and callers
        # only ever append on the right.
        item = held[0] if held else None
        if item is None or item.task_id != message.task_id:
            with self.lock:
                item = find_item(held, message.task_id)
            if item is None:
                return  # already settled (failed by a broken pool)
        if kind == PARTIAL:
            if item.undecodable is None:
                try:
                    item.values.extend(loads(message.body, message.buffers))
                except BaseException as exc:
                    # The chunk ends here, at the first value not received.
                    item.undecodable = exc
            return
        value, error = _decode_outcome(item, message)
        with self.lock:
            if worker.held and worker.held[0] is item:
                worker.held.popleft()
            else:
                worker.held.remove(item)
            worker.held_bytes -= item.size
            if item.watched:
                self.watched -= 1
            retried = (
                error is not None
                and item.options is not None
                and self.retry_locked(item, error)
            )
            if not retried:
                self.by_future.pop(item.future, None)
            # A moving average: recent tasks say whether sending ahead pays.
            seconds = self.task_seconds
            if seconds is None:
                self.task_seconds = message.value
            else:
                self.task_seconds = seconds + (message.value - seconds) * 0.25
            self._dispatch_locked()
        if not retried:
            settle(item.future, value, error)

    def on_bad_frame(self, worker: WorkerHandle, why: BadFrameError) -> None:
        """Handle a frame ``worker`` did not send: fail one task, replace it.

        Called once the manager has stopped reading the worker (the stream
        is out of step). Frames arrive in order and a worker runs its items
        in order, so the bytes came before the result of the oldest item it
        holds: that item was running (or being received) when they were
        written, and it fails; the others run again on other workers.
        """
        settled: list[tuple[WorkItem, Any, BaseException | None]] = []
        task_id, first = self.board.read(worker.slot)[:2]
        with self.lock:
            item = worker.held[0] if worker.held and worker.ready else None
            if item is not None:
                worker.held.popleft()
                worker.held_bytes -= item.size
                if item.watched:
                    self.watched -= 1
                error = bad_frame_error(str(why), item.kind)
                if item.kind != CHUNK:
                    if not self.retry_locked(item, error):
                        self.by_future.pop(item.future, None)
                        settled.append((item, None, error))
                else:
                    # At the piece the board shows running, if it is this
                    # chunk's; else after the values already received.
                    stop = first if task_id == item.task_id else len(item.values)
                    recovery = self._finish_chunk_locked(item, stop, error, 0, settled)
                    if recovery is not None:
                        self.pending.appendleft(recovery)
        if worker.ready:
            # The rest it held is sent again (on_exit: killed for no item).
            worker.kill(KillReason(None, 0, None))
        elif self.initializer is not None:
            # Only the initializer has run in it.
            self._initializer_failed(why, None)
        else:
            worker.kill(None)  # counted as a worker that failed to start
        for done, value, failure in settled:
            settle(done.future, value, failure)

    def on_exit(self, worker: WorkerHandle) -> None:
        """Handle the death of ``worker``: settle or resend what it held."""
        self._drain(worker)
        process = worker.process
        process.join(STOP_GRACE_SECONDS)
        exitcode = process.exitcode
        posted = self.board.read(worker.slot)
        settled: list[tuple[WorkItem, Any, BaseException | None]] = []
        with self.lock:
            worker.gone = True
            if self.workers.get(worker.slot) is worker:
                del self.workers[worker.slot]
                self.free_slots.append(worker.slot)
            held = list(worker.held)
            worker.held.clear()
            worker.held_bytes = 0
            worker.outbox.clear()
            self.watched -= sum(1 for item in held if item.watched)
            broken = self.broken is not None
            if broken or (not held and worker.ready):
                redo: list[WorkItem] = []
            elif not worker.ready:
                redo = held
            else:
                redo = self._sort_out_locked(worker, held, posted, exitcode, settled)
            self.pending.extendleft(reversed(redo))
        if not broken and not worker.ready and worker.kill_reason is None:
            self._startup_failed(exitcode)
        for item, value, error in settled:
            settle(item.future, value, error)
        _close_quietly(worker)
        # A retired worker (max_tasks_per_child) is replaced when work
        # waits; a crashed or killed one at once, to keep the pool's size.
        abnormal = bool(held) or worker.kill_reason is not None or exitcode != 0
        with self.lock:
            self._dispatch_locked()
            slot = self._reserve_spawn_locked(replace=abnormal)
        if slot is not None:
            # Not in this thread: starting a process takes milliseconds
            # (more on a loaded machine), and the live workers' results
            # must keep flowing meanwhile.
            threading.Thread(
                target=self._spawn, args=(slot,), name="executors-queue-spawn"
            ).start()

    def _sort_out_locked(
        self,
        worker: WorkerHandle,
        held: list[WorkItem],
        posted: tuple[int, int, int, int],
        exitcode: int | None,
        settled: list[tuple[WorkItem, Any, BaseException | None]],
    ) -> list[WorkItem]:
        """Decide what each item a dead worker held becomes.

        The item the board shows running is the victim (or, when the pool
        killed the worker on purpose, the item it was killed for); every
        other item had not started and is sent again. A chunk's victim
        keeps the values of the items before the one that was running.
        """
        task_id, first, end, started = posted
        reason = worker.kill_reason
        redo: list[WorkItem] = []
        for item in held:
            if item.task_id != task_id:
                redo.append(item)
                continue
            if reason is None and started == 0:
                # It died before the task started: while reading its frame
                # or unpickling its arguments. The task is the likely cause
                # (too large for the worker's memory): counted, so that it
                # cannot kill worker after worker.
                item.early_deaths += 1
                if item.early_deaths < EARLY_DEATHS_BEFORE_FAILED:
                    redo.append(item)
                    continue
                error = early_crash_error(exitcode, item.kind, item.early_deaths)
                if item.kind != CHUNK:
                    if not self.retry_locked(item, error):
                        self.by_future.pop(item.future, None)
                        settled.append((item, None, error))
                else:
                    self._finish_chunk_locked(item, 0, error, 0, settled)
                continue
            aimed = None
            if reason is not None and reason.item is item:
                aimed = reason.error  # the error it was killed with
            if item.kind != CHUNK:
                if reason is None:
                    error = crash_error(exitcode, item.kind)
                elif aimed is not None:
                    error = aimed()
                else:
                    # Killed for another item (or to stop the pool) as this
                    # one began: it did nothing wrong, run it again.
                    redo.append(item)
                    continue
                if not self.retry_locked(item, error):
                    self.by_future.pop(item.future, None)
                    settled.append((item, None, error))
                continue
            size = len(item.chunk or ())
            careful = 0
            replay = None
            chunk_error: BaseException | None = None
            if reason is None and end - first <= 1:
                stop, chunk_error = first, crash_error(exitcode, item.kind)
            elif reason is None:
                # Several fast items ran as one piece: rerun them one at a
                # time; the one that crashes again, or outlives the time
                # the piece had run, is the culprit (see Replay).
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
        settled: list[tuple[WorkItem, Any, BaseException | None]],
        replay: tuple[float, Callable[[], BaseException]] | None = None,
    ) -> WorkItem | None:
        """End a chunk at item ``stop`` with ``error``.

        Values of items that ran but never reached the parent are lost with
        the worker; those items (at most ``FLUSH_SECONDS`` of work) run again
        as an internal chunk whose outcome completes this one, the items
        before ``careful`` one per piece.
        """
        chunk = item.chunk or Chunk([], star=False)
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
            body, buffers = dumps_chunk(item.fn, rest, careful)
        except Exception as exc:
            settled.append((item, None, exc))
            return None
        recovery = WorkItem(
            next(self.ids),
            CHUNK,
            OurFuture(),
            body,
            buffers,
            item.timeout,
            item.fn,
            rest,
            internal=True,
        )
        if replay is not None and careful:
            recovery.replay = Replay(replay[0], careful, replay[1])
        # Internal: it completes the caller's future in the settling thread,
        # and must never wait behind users' callbacks.
        add_internal_callback(
            recovery.future, functools.partial(_complete_recovered, item, error)
        )
        return recovery

    def _drain(self, worker: WorkerHandle) -> None:
        # What a worker wrote before it died is still in its pipe.
        if worker.eof:
            return
        readable = _poller(worker.results)
        while readable():
            try:
                message = worker.results.recv()
            except (EOFError, OSError, BadFrameError):
                # A bad frame from a dead worker: its death fails the task.
                break
            self.on_message(worker, message)
        worker.eof = True

    # -- failures --------------------------------------------------------------

    def _startup_failed(self, exitcode: int | None) -> None:
        if self.initializer is not None:
            self._initializer_failed(None, exitcode)
            return
        with self.lock:
            self.startup_failures += 1
            if self.startup_failures < STARTUP_FAILURES_BEFORE_BROKEN:
                return
        text = describe_exitcode(exitcode)
        self.break_pool(
            lambda: WorkerCrashedError(
                f"{STARTUP_FAILURES_BEFORE_BROKEN} worker processes in a row died "
                f"while starting (the last with {text}); the executor is broken",
                exitcode,
            )
        )

    def _initializer_failed(
        self, cause: BaseException | None, exitcode: int | None
    ) -> None:
        if cause is not None:
            text = f"the initializer raised {type(cause).__name__}: {cause}"
        else:
            text = (
                f"a worker process died ({describe_exitcode(exitcode)}) "
                "while running the initializer"
            )

        def make() -> BaseException:
            error = InitializerFailedError(
                f"{text}; the executor is broken and runs no more tasks"
            )
            error.__cause__ = cause
            return error

        self.break_pool(make)

    def break_pool(self, make_error: Callable[[], BaseException]) -> None:
        """Fail every unfinished item and stop every worker, for good."""
        with self.lock:
            if self.broken is not None:
                return
            self.broken = make_error
            items = list(self.pending)
            self.pending.clear()
            items += self._undelay_all_locked()
            for worker in self.workers.values():
                items += worker.held
                worker.held.clear()
                worker.held_bytes = 0
                worker.outbox.clear()
                worker.kill(KillReason(None, 0, None))
            self.by_future.clear()
            self.watched = 0
        drop(items, make_error)
        self.wakeup.wake()

    def interrupt(self) -> None:
        """Stop now (Ctrl-C): kill every worker, fail what they ran.

        The items the workers held fail with
        :class:`~executors.ExecutorInterruptedError`, as on every backend; the
        queue is cancelled (the executor's ``shutdown(wait=True,
        cancel_futures=True)`` follows).
        """
        self.end_workers(interrupted_error)

    def end_workers(
        self,
        make_error: Callable[[], BaseException],
        sig: signal.Signals | None = None,
    ) -> None:
        """Stop every worker now and resolve every unfinished future.

        For Ctrl-C and ``terminate_workers()``/``kill_workers()``: queued
        items that never ran are cancelled; items a worker held, items
        waiting to be sent again or retried, and the rest of a crashed
        chunk fail with ``make_error``. No worker is started from now on.
        A closing pool then stops as soon as the killed workers are gone.

        Args:
            make_error: Builds the exception of each item that had started.
            sig: The signal for the workers; default SIGKILL.
        """
        with self.lock:
            self.closing = self.interrupted = True
            failed: list[WorkItem] = []
            for worker in self.workers.values():
                failed += worker.held
                worker.held.clear()
                worker.held_bytes = 0
                worker.outbox.clear()
                worker.kill(KillReason(None, 0, None), sig)
            cancelled: list[Future[Any]] = []
            for item in self.pending:
                if item.started or item.internal:
                    failed.append(item)
                else:
                    cancelled.append(item.future)
            self.pending.clear()
            failed += self._undelay_all_locked()
            self.by_future.clear()
            self.watched = 0
        # Cancelled first: a done-callback of a failed future (a map's)
        # must find the queued ones already cancelled.
        for future in cancelled:
            future.cancel()
        notify_cancelled(cancelled)
        drop(failed, make_error)
        self.wakeup.wake()

    # -- retries ---------------------------------------------------------------

    def retry_locked(self, item: WorkItem, error: BaseException) -> bool:
        """Run a failed task again if its options allow; else note its attempts.

        A task that raised an exception its ``retry_on`` lists, or whose
        worker died under it (or before it started), runs again, in a fresh
        attempt on whichever worker takes it first, after its
        ``retry_delay``. A task stopped on purpose (``kill_task()``, Ctrl-C,
        a broken or stopping pool) is not.

        Returns:
            True if the item runs again: the caller must not settle it.
        """
        options = item.options
        if options is None:
            return False
        if (
            self.broken is not None
            or self.interrupted
            or self.stopped
            or item.kill  # kill_task() asked for it as it failed
            or isinstance(error, TaskKilledError)
            or not options.retryable(
                error, item.attempts, crashed=isinstance(error, WorkerCrashedError)
            )
        ):
            record_attempts(error, item.attempts)
            return False
        item.attempts += 1
        # A new id: nothing the previous attempt's worker posted or sent can
        # be taken for this attempt's.
        item.task_id = next(self.ids)
        item.kill = False
        item.early_deaths = 0
        delay = options.delay
        if delay > 0:
            self.delayed[item] = timer.call_later(
                delay, functools.partial(self._retry_due, item)
            )
        else:
            # First in line: it was running already.
            self.pending.appendleft(item)
        return True

    def _undelay_locked(self, item: WorkItem) -> None:
        entry = self.delayed.pop(item, None)
        if entry is not None:
            entry.cancel()

    def _undelay_all_locked(self) -> list[WorkItem]:
        """Take every task waiting out a retry delay; their timers are dropped."""
        items = list(self.delayed)
        for entry in self.delayed.values():
            entry.cancel()
        self.delayed.clear()
        return items

    def _retry_due(self, item: WorkItem) -> None:
        # In the timer thread: quick, and never blocking (see _send_locked).
        with self.lock:
            if self.delayed.pop(item, None) is None:
                return  # killed, or the pool ended, while it waited
            self.pending.appendleft(item)
            self._dispatch_locked()
            slot = self._reserve_spawn_locked()
        if slot is not None:
            threading.Thread(
                target=self._spawn, args=(slot,), name="executors-queue-spawn"
            ).start()
        self.wakeup.wake()

    # -- timeouts (manager thread) -------------------------------------------

    def check_deadlines(self) -> float | None:
        """Kill workers whose item ran out of time; return when to look again."""
        if self.watched <= 0:
            return None
        now = time.monotonic_ns()
        wait: float | None = None
        with self.lock:
            for worker in self.workers.values():
                if worker.kill_reason is not None or not any(
                    item.watched for item in worker.held
                ):
                    continue
                posted = self.board.read(worker.slot)
                task_id, index, _, started = posted
                item = find_item(worker.held, task_id)
                limit = None if item is None else time_limit(item, index)
                if item is not None and item.kill:
                    worker.kill(KillReason(item, index, killed_error))
                    continue
                if limit is None or started <= 0:
                    # Its watched item has not started yet, or has returned
                    # (its result is on its way: the timeout is over).
                    pause = TIMEOUT_POLL_SECONDS
                else:
                    seconds, error = limit
                    deadline = started + int(seconds * 1e9)
                    if now < deadline:
                        pause = (deadline - now) / 1e9
                    elif self.board.read(worker.slot) == posted:
                        worker.kill(KillReason(item, index, error))
                        continue
                    else:
                        pause = 0.0  # it moved on as we looked: look again
                wait = pause if wait is None else min(wait, pause)
        return wait

    # -- the end (manager thread) ---------------------------------------------

    def should_stop(self) -> bool:
        """True once there is nothing left to do, ever."""
        if self.broken is None and not (
            self.closing or interpreter_exiting() or self.owner() is None
        ):
            return False  # the common case, without taking the lock
        with self.lock:
            if self.broken is not None:
                self.stopped = True
                return True
            closing = self.closing or interpreter_exiting() or self.owner() is None
            if not closing:
                return False
            # Drops the queued futures cancelled since the last dispatch.
            self._dispatch_locked()
            if self.pending or self.starting or self.delayed:
                return False
            if any(worker.held for worker in self.workers.values()):
                return False
            self.stopped = True
            return True

    def stop_workers(self) -> None:
        """Stop every worker (end-of-file, then SIGKILL after a grace)."""
        with self.lock:
            self.stopped = True
            workers = list(self.workers.values())
            self.workers.clear()
            leftover = list(self.pending)
            self.pending.clear()
            leftover += self._undelay_all_locked()
            for worker in workers:
                leftover += worker.held
            broken = self.broken
        for worker in workers:
            if broken is not None:
                worker.kill(KillReason(None, 0, None))
            with contextlib.suppress(OSError):
                worker.tasks.close()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                worker.kill(KillReason(None, 0, None))
                worker.process.join()
            _close_quietly(worker)
        # Only after a bug in the manager can work be left: never leave it
        # pending forever.
        error = broken or manager_failed_error
        drop(leftover, error)
        self.wakeup.close()
        self.board.close()


# -- helpers ------------------------------------------------------------------


# Decoding catches BaseException: unpickling runs any callable the pickle
# names, and a SystemExit (or any BaseException) it raises in the manager
# thread would break the whole pool. It fails only its own task.


def _decode_exception(message: Message) -> BaseException:
    try:
        error = loads(message.body, message.buffers)
    except BaseException as exc:
        return exc
    if isinstance(error, BaseException):
        return error
    return RuntimeError(f"a worker sent {error!r} as an exception")


def _decode_outcome(
    item: WorkItem, message: Message
) -> tuple[Any, BaseException | None]:
    """Unpickle a final message; an unpicklable result fails its task."""
    if message.kind == ERROR:
        return None, _decode_exception(message)
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


def _complete_recovered(
    item: WorkItem, error: BaseException | None, recovery: Future[Any]
) -> None:
    try:
        rest: ChunkResult = recovery.result()
    except BaseException as exc:
        settle(item.future, error=exc)
        return
    final = rest.error if rest.error is not None else error
    values = item.values + rest.values
    settle(item.future, ChunkResult(values, final, item.elapsed + rest.elapsed))


def _poller(channel: Channel) -> Callable[[], bool]:
    """A function telling whether ``channel`` has data to read now."""
    if os.name != "posix":
        return functools.partial(channel.conn.poll, 0)
    # poll, not select: select fails on descriptors past 1023.
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLIN)
    return lambda: bool(poller.poll(0))


def _grow_pipe(conn: Connection) -> int:
    """Grow a Linux pipe to PIPE_BYTES; return the bytes it holds."""
    if not sys.platform.startswith("linux"):
        return MIN_PIPE_BYTES
    import fcntl

    fd = conn.fileno()
    with contextlib.suppress(OSError):
        # Fails past /proc/sys/fs/pipe-max-size or the per-user page budget;
        # the pipe then keeps its size, which is read back below.
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
    try:
        return int(fcntl.fcntl(fd, _F_GETPIPE_SZ))
    except OSError:
        return MIN_PIPE_BYTES


def _preload_in_forkserver(ctx: BaseContext) -> None:
    """Have the forkserver import the worker module before it forks anyone.

    A worker forked from a server that has already imported this package
    starts in milliseconds instead of re-importing it (about 100 ms, and
    seconds on a loaded machine) every time: this decides how fast crashed
    or retired workers are replaced. Only possible before the server starts;
    the modules already listed (``__main__`` by default) stay listed.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    modules = getattr(server, "_preload_modules", None)
    running = getattr(server, "_forkserver_pid", None) is not None
    if running or not isinstance(modules, list) or _WORKER_MODULE in modules:
        return
    with contextlib.suppress(Exception):
        ctx.set_forkserver_preload([*modules, _WORKER_MODULE])


_WORKER_MODULE = run_worker.__module__


def _close_quietly(worker: WorkerHandle) -> None:
    for channel in (worker.tasks, worker.results):
        with contextlib.suppress(OSError):
            channel.close()
    with contextlib.suppress(ValueError, AttributeError):
        worker.process.close()
