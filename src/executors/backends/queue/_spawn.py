"""Starting and stopping worker processes: :class:`Spawner`, :func:`stop_all`.

A worker's board row (``slot``) and identity (``worker_id()``) differ: a
recycling pool's spare has its own row and takes its predecessor's identity.
See docs/backends/queue.md, "Options" and "Start methods".
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from ..._errors import ExecutorFailedError
from ..._forkserver import preload_in_forkserver
from ._board import FIELDS, SENT
from ._items import KillReason, WorkerHandle
from ._wire import Channel
from ._worker import run_worker

if TYPE_CHECKING:
    from ._pool import QueuePool

__all__ = [
    "PIPE_BYTES",
    "STOP_GRACE_SECONDS",
    "Spawner",
    "Start",
    "close_quietly",
    "stop_all",
]

#: A worker to start: board row, identity, and for a spare the worker it replaces.
Start = tuple[int, int, "WorkerHandle | None"]

# Linux pipes are grown to this (64 KiB by default, 8 KiB once a user has many)
# so a map chunk waits in the pipe while the previous one runs and a large
# argument crosses in fewer wake-ups; pages are allocated only as data flows.
PIPE_BYTES = 1024 * 1024
# Assumed where a pipe's size cannot be read (macOS pipes start at 16 KiB).
MIN_PIPE_BYTES = 16 * 1024
# Shutdown kills a worker not gone this long after EOF (stuck in its initializer).
STOP_GRACE_SECONDS = 3.0
# Linux fcntl commands (the fcntl module names them from Python 3.10 only).
_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032


class Spawner:
    """Starts the pool's workers, each in a thread of its own.

    Never a caller's (it may hold the call queue's lock) nor the manager's (a
    start takes milliseconds, and results must keep flowing meanwhile).
    """

    def __init__(self, pool: QueuePool) -> None:
        self.pool = pool
        self.fork = pool.ctx.get_start_method() == "fork"
        if pool.ctx.get_start_method() == "forkserver":
            preload_in_forkserver(pool.ctx)
        # Held from starting a process to registering it, so a forked worker
        # learns every sibling pipe to close; and, under fork, by close().
        self.lock = threading.RLock()

    def reserve_locked(self, want: int, replace: bool = False) -> list[Start]:
        """Rows and identities for new workers, under ``pool.lock``.

        With ``replace`` (a worker died), at least one unless the pool closes idle.
        """
        pool = self.pool
        if pool.ended or pool.stopped:
            return []
        if replace and not (pool.closing and not want):
            want = max(want, pool.starting + 1)
        starts: list[Start] = []
        while pool.free_ids and pool.free_slots and want > pool.starting:
            pool.starting += 1
            starts.append((pool.free_slots.pop(), pool.free_ids.pop(), None))
        return starts

    def start_spare_locked(self, worker: WorkerHandle) -> None:
        """Start ``worker``'s replacement ahead of its retirement (``pool.lock``)."""
        pool = self.pool
        if (
            worker.successor is not None
            or worker.successor_starting
            or worker.handed_over
            or worker.spare
            or pool.closing
            or pool.ended
            or pool.stopped
            or not pool.free_slots
        ):
            return
        worker.successor_starting = True
        pool.starting_spares += 1
        self.start([(pool.free_slots.pop(), worker.identity, worker)])

    def hand_over_locked(self, worker: WorkerHandle) -> None:
        """``worker`` runs no more tasks: its identity goes to its spare, or the pool.

        Once per worker: at a retiring worker's last result, LEAVING, or death.
        """
        if worker.handed_over:
            return
        worker.handed_over = True
        if worker.spare:
            # A spare dead before taking over: its predecessor keeps the identity.
            predecessor = worker.predecessor
            if predecessor is not None and predecessor.successor is worker:
                predecessor.successor = None
            return
        successor = worker.successor
        if successor is not None:
            successor.spare = False
        elif not worker.successor_starting:
            # (A spare still starting takes it when it registers.)
            self.pool.free_ids.append(worker.identity)

    def start(self, starts: list[Start]) -> None:
        for start in starts:
            threading.Thread(
                target=self._spawn, args=start, name="executors-queue-spawn"
            ).start()

    def _spawn(
        self, slot: int, identity: int, predecessor: WorkerHandle | None
    ) -> None:
        pool = self.pool
        with self.lock:
            try:
                worker = self._start_process(slot, identity, predecessor)
            except BaseException as exc:
                with pool.lock:
                    self._forget_start_locked(identity, predecessor, worker=None)
                    pool.free_slots.append(slot)
                    alive = bool(pool.workers)
                if not alive:
                    reason = f"{type(exc).__name__}: {exc}"
                    pool.break_pool(
                        lambda: ExecutorFailedError(
                            f"the queue executor could not start a worker ({reason})"
                        )
                    )
                pool.wakeup.wake()
                return
            with pool.lock:
                # The pool ended (Ctrl-C, terminate_workers()) as it started.
                late = pool.stopped or pool.ended
                self._forget_start_locked(identity, predecessor, worker)
                if not late:
                    pool.workers[slot] = worker
                    pool.generation += 1
                    pool.dispatch_locked()
            if late:
                worker.kill(KillReason(None, 0, None))
                worker.process.join()
                self.close(worker)
        # Also when it came late: a stopping manager waits for `starting`
        # to reach zero, and nothing else would wake it to see that.
        pool.wakeup.wake()
        if not late:
            pool.calls.pump()  # a worker that is starting takes a call

    def close(self, worker: WorkerHandle) -> None:
        """Close the parent's descriptors of a worker that has exited.

        Under fork, never during a fork: the child closes its siblings' pipes
        by number, and a number reused meanwhile would be the wrong one.
        """
        if self.fork:
            with self.lock:
                close_quietly(worker)
        else:
            close_quietly(worker)

    def _forget_start_locked(
        self,
        identity: int,
        predecessor: WorkerHandle | None,
        worker: WorkerHandle | None,
    ) -> None:
        """Count a start as done; ``worker`` is ``None`` if it failed."""
        pool = self.pool
        if predecessor is None:
            pool.starting -= 1
            if worker is None:
                pool.free_ids.append(identity)
            return
        pool.starting_spares -= 1
        predecessor.successor_starting = False
        if predecessor.handed_over:
            # Its predecessor has left meanwhile: it is an ordinary worker.
            if worker is None:
                pool.free_ids.append(identity)
        elif worker is not None:
            worker.spare = True
            predecessor.successor = worker

    def _start_process(
        self, slot: int, identity: int, predecessor: WorkerHandle | None
    ) -> WorkerHandle:
        pool = self.pool
        task_reader, task_writer = pool.ctx.Pipe(duplex=False)
        result_reader, result_writer = pool.ctx.Pipe(duplex=False)
        close_fds: list[int] = []
        if self.fork:
            # Inherited descriptors the child closes: siblings' pipes, the wake-up,
            # the parent's ends of its own (else its task pipe never sees EOF).
            close_fds += [
                pool.wakeup.reader.fileno(),
                task_writer.fileno(),
                result_reader.fileno(),
            ]
            with pool.lock:
                for other in pool.workers.values():
                    close_fds += [other.tasks.fileno(), other.results.fileno()]
            own = {task_reader.fileno(), result_writer.fileno()}
            close_fds = [fd for fd in close_fds if fd not in own]
        pool.board.clear(slot)
        process = pool.ctx.Process(  # type: ignore[attr-defined]
            target=run_worker,
            args=(
                task_reader,
                result_writer,
                pool.board,
                slot,
                identity,
                pool.initializer,
                pool.initargs,
                pool.max_tasks,
                os.getpid(),
                close_fds,
                pool.shm_threshold,
                pool.worker_spec,
            ),
            name=f"executors-queue-worker-{slot}",
        )
        try:
            process.start()
        finally:
            # Only the worker keeps these ends: either side's death is an EOF.
            task_reader.close()
            result_writer.close()
        capacity = _grow_pipe(task_writer)
        _grow_pipe(result_reader)
        tasks, results = Channel(task_writer), Channel(result_reader)
        tasks.make_nonblocking()
        results.check_against(pool.board.view, slot * FIELDS + SENT)
        return WorkerHandle(
            process, tasks, results, slot, capacity, identity, predecessor
        )


def stop_all(workers: Iterable[WorkerHandle], kill: bool) -> None:
    """Stop ``workers``: end-of-file (or SIGKILL at once), SIGKILL after a grace."""
    workers = list(workers)
    for worker in workers:
        if kill:
            worker.kill(KillReason(None, 0, None))
        with contextlib.suppress(OSError):
            worker.tasks.close()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.exitcode is None:
            worker.kill(KillReason(None, 0, None))
            worker.process.join()
        close_quietly(worker)


def _grow_pipe(conn: Connection) -> int:
    """Grow a Linux pipe to PIPE_BYTES; return the bytes it holds."""
    if not sys.platform.startswith("linux"):
        return MIN_PIPE_BYTES
    import fcntl

    fd = conn.fileno()
    with contextlib.suppress(OSError):
        # Fails past /proc/sys/fs/pipe-max-size or the per-user page budget.
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
    try:
        return int(fcntl.fcntl(fd, _F_GETPIPE_SZ))
    except OSError:
        return MIN_PIPE_BYTES


def close_quietly(worker: WorkerHandle) -> None:
    for channel in (worker.tasks, worker.results):
        with contextlib.suppress(OSError):
            channel.close()
    with contextlib.suppress(ValueError, AttributeError):
        worker.process.close()
