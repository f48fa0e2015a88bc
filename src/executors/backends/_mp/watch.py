"""The watch of a Pool's workers: their sentinels and the status pipe.

:class:`PoolWatch` is the thread that sees a worker die, an initializer
fail or one of Pool's threads stop, breaks the backend's call queue, and
closes or dismantles the Pool (:mod:`.reaping`). Caller side only; see
:mod:`executors.backends._mp` for the whole picture.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from ..._errors import ExecutorFailedError, WorkerCrashedError, describe_exitcode
from ..._lifecycle import ManagerThread, manager_failed
from ..._outcome import initializer_error
from ..._workers import WorkerSpec
from .pool import PoolWorkers, WatchedPoolMixin
from .reaping import (
    DISMANTLE_SECONDS,
    POLL_SECONDS,
    close_pool,
    kill_pool,
    release_pool,
    signal_process,
    stop_replacing,
)
from .status import StatusPipe, read_reports, start_pool_worker
from .taskslots import TaskSlots

__all__ = ["MakeError", "PoolWatch"]

# How often the watch checks that Pool's own threads are alive when nothing
# else wakes it. A dead handler thread would otherwise hang every future
# silently; checking costs one wake-up per second.
HEALTH_CHECK_SECONDS = 1.0
# Pool's worker handler reaps a dead worker within milliseconds; the watch
# waits this long for it (reading the exit code concurrently with it can make
# forkserver report 255) before reading the code itself.
REAP_GRACE_SECONDS = 1.0

#: ``on_broken``'s argument: builds the error each unfinished future gets.
MakeError = Callable[[], BaseException]


class PoolWatch(ManagerThread):
    """Watches one Pool's workers; then closes or dismantles the Pool.

    Use in three steps: create it, create the Pool with
    :meth:`pool_options` among its arguments, then :meth:`watch` it. The
    thread runs until :meth:`close` (the backend's work has drained: close
    gracefully), :meth:`kill`, or a failure it reports through
    ``on_broken``; then it dismantles the Pool and releases every file
    descriptor it used. It holds no reference to the executor, so an
    executor that is garbage-collected can still close its Pool.

    Args:
        backend: The backend's name, for thread names and messages.
        context: The Pool's multiprocessing context.
    """

    def __init__(self, backend: str, context: BaseContext) -> None:
        super().__init__(name=f"executors-{backend}-watch")
        self._backend = backend
        self.status = StatusPipe(context)
        self._workers = PoolWorkers(self.status.wake)
        self._pool: WatchedPoolMixin  # set by watch()
        self._on_broken: Callable[[MakeError], object] = lambda make_error: None
        self._has_initializer = False
        self._closing = False  # close() asked: the work has drained
        self._killing = False  # kill() asked, or broken
        self._released = False
        self._starting: list[BaseProcess] = []
        self._watched: dict[int, BaseProcess] = {}  # sentinel -> process
        self._dying: dict[BaseProcess, float] = {}  # exited, awaiting Pool's reap
        self._ready: set[str] = set()
        self._retired: set[str] = set()
        self._init_errors: dict[str, tuple[str, str]] = {}
        self._slots: TaskSlots | None = None
        self._on_ready: Callable[[], object] | None = None
        # Workers killed by stop_call(): their exit is no crash.
        self._stopped_pids: set[int] = set()
        # A forked child (the fork start method, os.fork) inherits this
        # object, maybe with a lock held; only the creating process may act.
        self._pid = os.getpid()

    def pool_options(
        self,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        task_slots: TaskSlots | None = None,
        worker: WorkerSpec | None = None,
    ) -> dict[str, Any]:
        """The keyword arguments the Pool must be created with.

        Args:
            initializer: The user's initializer, run in each worker after
                :func:`start_pool_worker` has tied the worker to the caller.
            initargs: Its arguments.
            task_slots: Lets :meth:`stop_call` stop one task; the backend
                then runs its calls through :func:`.taskslots.run_tracked`.
        """
        self._has_initializer = initializer is not None
        self._slots = task_slots
        status = self.status.writer
        worker_args: tuple[Any, ...] = (status, os.getpid(), initializer, initargs)
        if task_slots is not None or worker is not None:
            worker_args += (task_slots, worker)
        return {
            "on_new_worker": self._workers.adopt,
            "initializer": start_pool_worker,
            "initargs": worker_args,
        }

    def watch(
        self,
        pool: WatchedPoolMixin,
        on_broken: Callable[[MakeError], object],
        on_ready: Callable[[], object] | None = None,
    ) -> None:
        """Start watching ``pool``.

        Args:
            pool: The Pool, created with :meth:`pool_options`.
            on_broken: Called once, in this thread, when a worker crashed,
                the initializer failed or one of Pool's threads died, with
                the factory of the error every unfinished future gets (the
                backend breaks its call queue with it). The Pool is then
                dismantled.
            on_ready: Called in this thread when workers have become ready
                (see :meth:`ready_workers`); must be quick.
        """
        self._pool = pool
        self._on_broken = on_broken
        self._on_ready = on_ready
        self.start()

    def ready_workers(self) -> int:
        """How many workers have started (initializer done) and not exited.

        Workers killed by :meth:`stop_call` no longer count. Safe from any
        thread; it lags the workers by the watch's reading of their reports.
        """
        return max(0, len(self._ready) - len(self._stopped_pids))

    def discard(self) -> None:
        """Release the status pipe when the Pool could not be created."""
        self.status.close()

    # -- called from other threads ----------------------------------------

    def close(self) -> None:
        """The work has drained: close the Pool gracefully (bounded)."""
        if os.getpid() == self._pid:
            self._closing = True
            self.status.wake()

    def kill(self) -> None:
        """Dismantle the Pool now, killing its workers (Ctrl-C)."""
        if os.getpid() == self._pid:
            self._killing = True
            self.status.wake()

    def terminate(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every worker now, then dismantle the Pool.

        For ``terminate_workers()`` and ``kill_workers()``: the workers'
        exits are no crash (the backend has failed the running calls
        itself), and Pool starts no replacement, which would take queued
        tasks from its pipe. The dismantling kills what survives ``sig``;
        :meth:`wait` then returns within :data:`DISMANTLE_SECONDS` or so.
        """
        if os.getpid() != self._pid:
            return
        self._killing = True
        pool = getattr(self, "_pool", None)
        if pool is not None and not self._released:
            deadline = time.monotonic() + DISMANTLE_SECONDS
            with contextlib.suppress(OSError, ValueError):  # already released
                stop_replacing(pool, deadline)
        for process in self._workers.all():
            signal_process(process, sig)
        self.status.wake()

    def stop_call(self, call_id: int) -> str | None:
        """Stop the task of one call launched through ``run_tracked``.

        Safe from any thread. Needs :class:`TaskSlots` (see
        :meth:`pool_options`). The worker running the call is killed and
        Pool replaces it, as after a clean retirement; a call that has not
        started is skipped by the worker that takes it.

        Returns:
            ``STOP_KILLED`` (the call's result will never arrive: the
            backend must drop it from Pool's cache), ``STOP_SKIPPED``, or
            None if it could not be stopped (see :mod:`.taskslots`).
        """
        slots = self._slots
        if slots is None or self._killing or os.getpid() != self._pid:
            return None
        return slots.stop(call_id, self._kill_stopped)

    def unskip(self, call_id: int) -> None:
        """Forget a call :meth:`stop_call` skipped that had finished already.

        The backend calls it when the outcome of a skipped call arrives
        anyway: no worker will ever take (and drop) that call.
        """
        if self._slots is not None:
            self._slots.unskip(call_id)

    def _kill_stopped(self, pid: int) -> None:
        # Under the slots' lock. Marked before the kill: the watch must
        # find the mark when it sees the exit.
        self._stopped_pids.add(pid)
        with contextlib.suppress(ProcessLookupError):  # it died on its own
            os.kill(pid, signal.SIGKILL)

    def wait(self) -> None:
        """Wait until the Pool is closed or dismantled.

        Returns at once in a thread the Pool needs (this one, or one of
        Pool's, where a library callback may run): it would wait for itself.
        """
        if os.getpid() != self._pid or self.ident is None:
            return  # never started, or a forked child's copy
        current = threading.current_thread()
        if current is self or current in self._pool.handler_threads:
            return
        self.join()

    def close_at_exit(self) -> None:
        """At interpreter exit, for a Pool whose executor was collected."""
        self.wait()

    # -- the thread ---------------------------------------------------------

    def loop(self) -> None:
        self._watch()
        self._finish()

    def on_failure(self, error: BaseException) -> None:
        # A bug here must not leave futures waiting forever.
        self._killing = True
        self._on_broken(manager_failed(self._backend, "pool watch", error))
        self._finish()

    def _broken(self, make_error: MakeError) -> None:
        self._killing = True
        self._on_broken(make_error)

    def _watch(self) -> None:
        reader = self.status.reader
        while True:
            self._take_new()
            if self._killing or self._closing:
                return
            busy = self._starting or self._dying
            timeout = POLL_SECONDS if busy else HEALTH_CHECK_SECONDS
            for ready in wait([reader, *self._watched], timeout):
                if isinstance(ready, int):
                    self._dying[self._watched.pop(ready)] = time.monotonic()
            self._read_status()
            self._check_exits()
            if not self._killing:
                self._check_threads()

    def _take_new(self) -> None:
        starting = self._starting + self._workers.take_new()
        self._starting = []
        for process in starting:
            try:
                sentinel = process.sentinel
            except ValueError:  # not started yet
                self._starting.append(process)
                continue
            self._watched[sentinel] = process

    def _read_status(self) -> None:
        ready = len(self._ready)
        self._read_messages()
        if len(self._ready) > ready and self._on_ready is not None:
            self._on_ready()

    def _read_messages(self) -> None:
        for kind, who, detail in read_reports(self.status.reader):
            if kind == b"R":
                self._ready.add(who)
            elif kind == b"X":
                self._retired.add(who)
            elif kind == b"F":
                summary, _, text = detail.partition(b"\0")
                self._init_errors[who] = (
                    summary.decode(errors="replace"),
                    text.decode(errors="replace"),
                )
            # An empty message is a wake-up.

    def _check_exits(self) -> None:
        pool_workers = self._pool._pool
        worker_handler = self._pool._worker_handler
        now = time.monotonic()
        for process, since in list(self._dying.items()):
            # Pool's worker handler reaps the exit itself; reading the exit
            # code at the same time races with it (forkserver then reports
            # 255 to one reader), so wait for its reap.
            reaped = process not in pool_workers
            handler_gone = not worker_handler.is_alive()
            if not (reaped or handler_gone or now - since > REAP_GRACE_SECONDS):
                continue
            del self._dying[process]
            self._on_exit(process)

    def _on_exit(self, process: BaseProcess) -> None:
        code = process.exitcode
        name = process.name
        pid = process.pid
        backend = self._backend
        if self._slots is not None and pid is not None:
            self._slots.release(pid)
        if self._killing:
            # Broken already, or the backend stops the workers itself
            # (terminate, Ctrl-C): an exit now is no news.
            return
        if pid in self._stopped_pids:
            # Killed by stop_call() inside its task: Pool has started its
            # replacement, and the backend settled the stopped call.
            self._stopped_pids.discard(pid)
            self._forget(process)
        elif name in self._init_errors:
            summary, text = self._init_errors[name]
            self._broken(
                functools.partial(initializer_error, backend, pid, summary, text)
            )
        elif self._has_initializer and name not in self._ready:
            self._broken(
                functools.partial(initializer_error, backend, pid, exitcode=code)
            )
        elif code == 0 and name in self._retired:
            # A clean exit between tasks (max_tasks_per_child): Pool has
            # started its replacement; no task was lost.
            self._forget(process)
        else:
            self._broken(functools.partial(_worker_crashed, backend, code, pid))

    def _forget(self, process: BaseProcess) -> None:
        self._ready.discard(process.name)
        self._retired.discard(process.name)
        self._workers.forget(process)
        # Once Pool has reaped and dropped it, release its sentinel now rather
        # than at garbage collection (max_tasks_per_child=1 makes thousands).
        if process not in self._pool._pool:
            with contextlib.suppress(ValueError):
                process.close()

    def _check_threads(self) -> None:
        roles = ("worker handler", "task handler", "result handler")
        for role, thread in zip(roles, self._pool.handler_threads, strict=True):
            if not thread.is_alive():
                message = (
                    f"the {role} thread of the {self._backend!r} executor's "
                    "multiprocessing.Pool died; the executor is broken"
                )
                self._broken(functools.partial(ExecutorFailedError, message))
                return

    # -- closing and dismantling ------------------------------------------

    def _finish(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            graceful = self._closing and not self._killing
            if not (graceful and self._close_gracefully()):
                kill_pool(self._pool, self._workers.all)
        finally:
            release_pool(self._pool, self._workers.all())
            self.status.close()
            slots, self._slots = self._slots, None
            if slots is not None:
                slots.close()

    def _close_gracefully(self) -> bool:
        # terminate() may come while the Pool closes (the backend's queue
        # drained because the calls were failed): then stop waiting.
        return close_pool(self._pool, self._workers.all(), lambda: self._killing)


def _worker_crashed(
    backend: str, exitcode: int | None, pid: int | None
) -> BaseException:
    return WorkerCrashedError(
        f"a worker process (pid {pid}) of the {backend!r} executor died with "
        f"{describe_exitcode(exitcode)}; the pool is broken: every unfinished "
        "task failed (multiprocessing.Pool cannot tell which task a dead worker "
        "held) and no new task can be submitted",
        exitcode,
    )
