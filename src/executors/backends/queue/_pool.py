"""The state callers and the manager thread share: :class:`QueuePool`.

The call queue's lock is taken before ``QueuePool.lock``, never after. See
docs/backends/queue.md, "How it works" and "The transport: who writes what".
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any

from ... import _shm
from ..._futures import settle
from ..._lifecycle import (
    ending_on_keyboard_interrupt,
    interpreter_exiting,
    join_unless_current,
)
from ._board import RETURNED, Board
from ._items import (
    KillReason,
    Task,
    WorkerHandle,
    WorkItem,
    decode_exception,
    decode_outcome,
    find_item,
    initializer_error,
    stopped_error,
)
from ._manager import Wakeup
from ._sendahead import pick_worker
from ._spawn import Spawner, stop_all
from ._wire import (
    INIT_FAILED,
    LEAVING,
    PARTIAL,
    POLL_AFTER,
    READY,
    SOON,
    Message,
    SenderGone,
    discard,
    frame,
    loads,
)

if TYPE_CHECKING:
    from ..._callqueue import Call, CallQueue
    from ..._workers import WorkerSpec

__all__ = ["QueuePool"]


class QueuePool:
    """Everything the callers and the manager share, under ``lock``."""

    calls: CallQueue
    manager: threading.Thread | None = None
    #: Buffers of at least this many bytes go through shared memory.
    shm_threshold: int | None = None

    def __init__(
        self,
        ctx: BaseContext,
        max_workers: int,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        max_tasks_per_child: int | None,
        owner: object,
        recycles: bool = False,
    ) -> None:
        self.ctx = ctx
        self.max_workers = max_workers
        self.initializer = initializer
        # Set by the executor (executors._workers).
        self.worker_spec: WorkerSpec | None = None
        self.initargs = initargs
        self.max_tasks = max_tasks_per_child
        self.lock = threading.Lock()
        self.wakeup = Wakeup()
        wakeup = self.wakeup
        # Weak: an executor dropped without shutdown() is collected, and the
        # wake-up lets the manager wind the pool down.
        self.owner = weakref.ref(owner, lambda _: wakeup.wake())
        # With recycling, a row for each worker, its spare, and the worker
        # it replaces while that one exits.
        rows = max_workers * (3 if recycles else 1)
        self.board = Board(rows, ctx)
        # Launched items no worker has yet (resent after a crash, or whose
        # worker was taken between room() and launch()): before any new call.
        self.pending: deque[WorkItem] = deque()
        self.workers: dict[int, WorkerHandle] = {}
        self.free_slots = list(range(rows - 1, -1, -1))
        # worker_id()s no worker (or start) holds: the pool's room to grow.
        self.free_ids = list(range(max_workers - 1, -1, -1))
        self.starting = 0
        self.starting_spares = 0
        self.generation = 0  # bumped when a worker is registered
        self.ids = itertools.count(1)
        # Workers whose outbox became non-empty, for the manager to watch.
        self.unflushed: list[WorkerHandle] = []
        self.watched = 0  # held items with a kill request or a replay
        self.task_seconds: float | None = None
        self.startup_failures = 0
        self.closing = False
        self.ended = False  # workers stopped for good: no more start
        self.stopped = False
        self.deferred = threading.local()  # see launch()
        self.spawner = Spawner(self)

    def room(self, call: Call, waiting: int) -> bool:
        """Whether a worker can take ``call`` now; else start some (queue lock held)."""
        task: Task = call.payload
        with self.lock:
            if self.ended or self.stopped:
                return True  # launch() fails it at once
            if not self.pending and pick_worker(self, task.size):
                return True
            starts = self.spawner.reserve_locked(waiting + len(self.pending))
        self.spawner.start(starts)
        return False

    def launch(self, call: Call) -> None:
        """Hand ``call`` to a worker (``CallQueue``'s launch)."""
        task: Task = call.payload
        item = WorkItem(next(self.ids), task, call)
        # Outside the lock: a large argument's copy holds up nobody.
        placed = task.placed()
        if placed is not None:
            item.body, item.buffers, item.size = placed
        try:
            with self.lock:
                if self.ended or self.stopped:
                    raise stopped_error()
                # Under the lock: stop() and run_left() find it somewhere.
                call.handle = item
                self.pending.append(item)
                self.dispatch_locked()
        except Exception:
            raise
        except BaseException as exc:
            # Ctrl-C mid-write: the call is sent again (_send_locked), which
            # the call queue would fail; raised once the submit is done.
            self.deferred.error = exc

    def raise_deferred(self) -> None:
        """Raise a Ctrl-C that landed in :meth:`launch` in this thread."""
        error = getattr(self.deferred, "error", None)
        if error is not None:
            self.deferred.error = None
            raise error

    def stop(self, call: Call) -> bool:
        """Stop ``call``'s task: kill its worker, or drop it if not yet sent."""
        item: WorkItem | None = call.handle
        if item is None:
            return False
        with self.lock:
            if item in self.pending:
                self.pending.remove(item)
                return True
            worker = next((w for w in self.workers.values() if item in w.held), None)
            if worker is None:
                return False  # its outcome is on its way
            if not item.kill:
                if not item.watched:
                    self.watched += 1
                item.kill = True  # dropped when its worker's death is handled
            task_id, index = self.board.read(worker.slot)[:2]
            if task_id == item.task_id:
                worker.kill(KillReason(item, index, None))
        self.wakeup.wake()
        return True

    def run_left(self, call: Call, timeout: float) -> float | None:
        """Seconds ``call``'s task may still run; None once it has returned.

        A task not started has its whole ``timeout`` left: asked again then,
        it is never stopped late.
        """
        item: WorkItem | None = call.handle
        if item is None:
            return timeout
        with self.lock:
            for worker in self.workers.values():
                if item in worker.held:
                    task_id, _, _, started = self.board.read(worker.slot)
                    if task_id != item.task_id or started == 0:
                        return timeout
                    if started == RETURNED:
                        return None
                    return (started - time.monotonic_ns()) / 1e9 + timeout
            # Waiting to be sent; else done, its outcome being reported.
            return timeout if item in self.pending else None

    def finish(self, item: WorkItem, value: Any, error: BaseException | None) -> bool:
        """Report an item's outcome; never with ``lock`` held."""
        if item.call is None:
            assert item.future is not None
            return settle(item.future, value, error)
        return self.calls.settle(item.call, value, error)

    def end_workers(self, sig: signal.Signals | None = None) -> None:
        """Kill every worker now; start none again (Ctrl-C, terminate, broken).

        The call queue has already settled the calls they held.
        """
        with self.lock:
            self.ended = True
            for worker in self.workers.values():
                worker.held.clear()
                worker.held_bytes = 0
                worker.outbox.clear()
                worker.kill(KillReason(None, 0, None), sig)
            self.pending.clear()
            self.watched = 0
        self.wakeup.wake()

    def break_pool(self, make_error: Callable[[], BaseException]) -> None:
        """Fail every unfinished call and stop every worker, for good."""
        self.calls.break_(make_error)
        self.end_workers()

    def initializer_failed(
        self, cause: BaseException | None, exitcode: int | None
    ) -> None:
        self.break_pool(functools.partial(initializer_error, cause, exitcode))

    def close(self) -> None:
        """Stop once the call queue is idle and every worker's items are done."""
        self.closing = True
        self.wakeup.wake()

    def close_at_exit(self) -> None:
        """At interpreter exit, for an executor dropped without ``shutdown()``.

        Its submitted work finishes first; on Ctrl-C it stops instead.
        """
        if not ending_on_keyboard_interrupt():
            with contextlib.suppress(KeyboardInterrupt):
                self.calls.close()
                self.close()
                join_unless_current(self.manager)
                return
        self.calls.close(cancel_futures=True)
        self.calls.fail_launched(stopped_error)
        self.end_workers()
        self.close()
        join_unless_current(self.manager)

    def dispatch_locked(self) -> None:
        pending = self.pending
        while pending:
            item = pending[0]
            worker = pick_worker(self, item.size)
            if worker is None:
                return
            self._send_locked(worker, item)

    def _send_locked(self, worker: WorkerHandle, item: WorkItem) -> None:
        """Move ``item`` (``pending[0]``) to ``worker`` and write it, never blocking."""
        task = item.task
        # Alone in the pool: a round trip's, most likely.
        hint = 0.0 if any(w.held for w in self.workers.values()) else POLL_AFTER
        try:
            # Held before it leaves the queue: it is always in one of them.
            worker.held.append(item)
            self.pending.popleft()
            worker.held_bytes += item.size
            worker.sent += 1
            max_tasks = self.max_tasks
            if max_tasks is not None and 2 * worker.sent >= max_tasks:
                worker.retiring = worker.sent >= max_tasks
                self.spawner.start_spare_locked(worker)
            if item.watched:
                self.watched += 1
            if worker.outbox:
                # The manager is writing an earlier frame: queue behind it.
                worker.outbox.append(
                    frame(task.kind, item.task_id, hint, item.body, item.buffers)
                )
            else:
                rest = worker.tasks.send_nowait(
                    task.kind, item.task_id, hint, item.body, item.buffers
                )
                if rest is not None:
                    # The pipe is full: the manager writes the rest.
                    worker.outbox.append(rest)
                    self.unflushed.append(worker)
                    self.wakeup.wake()
        except OSError:
            pass  # dead: handling its death sends the item again
        except BaseException:
            # Ctrl-C (or a signal handler's exception) mid-write: a frame may
            # be cut, and the worker would wait for ever. Replace it.
            if item in worker.held:
                if self.pending and self.pending[0] is item:
                    self.pending.popleft()
                worker.kill(KillReason(None, 0, None))
            raise
        if item.watched:
            self.wakeup.wake()

    def after_exit(self, replace: bool) -> None:
        """After a worker left: send what waits, start workers for it (manager)."""
        with self.lock:
            self.dispatch_locked()
            starts = self.spawner.reserve_locked(len(self.pending), replace)
        self.spawner.start(starts)
        self.calls.pump()

    def on_message(self, worker: WorkerHandle, message: Message) -> None:
        """Handle one message from ``worker`` (manager thread)."""
        kind = message.kind
        if kind == SOON:
            with self.lock:
                self.spawner.start_spare_locked(worker)
            return
        if kind == LEAVING:
            # It runs nothing more; what it holds runs elsewhere once it exits.
            with self.lock:
                worker.retiring = True
                self.spawner.hand_over_locked(worker)
            self.after_exit(replace=False)
            return
        if kind == READY:
            with self.lock:
                worker.ready = True
                self.startup_failures = 0
                self.dispatch_locked()
            self.calls.pump()
            return
        if kind == INIT_FAILED:
            self.initializer_failed(decode_exception(message), None)
            return
        held = worker.held
        # No lock: deque indexing is atomic, and callers only append on the right.
        item = held[0] if held else None
        if item is None or item.task_id != message.task_id:
            with self.lock:
                item = find_item(held, message.task_id)
            if item is None:
                discard(message)
                return  # already settled (failed by a broken pool)
        if kind == PARTIAL:
            if item.undecodable is None:
                try:
                    item.values.extend(loads(message.body, message.buffers))
                except SenderGone:
                    pass  # lost with its worker: the items run again (_triage)
                except BaseException as exc:
                    # The chunk ends here, at the first value not received.
                    item.undecodable = exc
            else:
                discard(message)
            return
        value, error = decode_outcome(item, message)
        if isinstance(error, SenderGone):
            # Its worker was killed as it sent it: its death settles the item.
            return
        with self.lock:
            if worker.held and worker.held[0] is item:
                worker.held.popleft()
            else:
                worker.held.remove(item)
            worker.held_bytes -= item.size
            if item.watched:
                self.watched -= 1
            if worker.retiring and not worker.held:
                self.spawner.hand_over_locked(worker)
            # A moving average: recent tasks say whether sending ahead pays.
            seconds = self.task_seconds
            if seconds is None:
                self.task_seconds = message.value
            else:
                self.task_seconds = seconds + (message.value - seconds) * 0.25
            self.dispatch_locked()
        if not self.finish(item, value, error):
            # Stopped at a timeout: nothing launched the next call in its place.
            self.calls.pump()

    def should_stop(self) -> bool:
        """True once there is nothing left to do, ever."""
        if not (
            self.closing or self.ended or interpreter_exiting() or self.owner() is None
        ):
            return False  # the common case, without taking a lock
        if self.calls.is_broken:
            self.stopped = True
            return True
        # The call queue first: its lock comes before the pool's.
        if not self.ended and not self.calls.is_idle():
            return False
        with self.lock:
            if self.pending or self.starting or self.starting_spares:
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
            self.pending.clear()
        stop_all(workers, kill=self.calls.is_broken)
        # Work is left only after a manager bug: never leave it pending.
        if not self.calls.is_idle():
            self.calls.break_(stopped_error)
        self.wakeup.close()
        self.board.close()
        _shm.trim()
