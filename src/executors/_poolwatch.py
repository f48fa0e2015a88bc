"""Watching the workers of a :class:`multiprocessing.pool.Pool`, which Pool won't do.

Pool replaces a worker that died and never completes the task it held
(CPython gh-66587, bpo-22393), restarts workers whose initializer fails
forever, and its own ``terminate()`` can block for good once a worker died
holding one of its locks. A backend built on Pool (or on a Pool subclass,
such as joblib's ``MemmappingPool``) closes these holes with three pieces::

    WatchedPoolMixin ── every worker Pool creates, replacements too ──┐
                                                                      v
    worker: start_pool_worker ── "ready" / "initializer failed" ──▶ StatusPipe
            (exits with the caller)   / "exiting cleanly"             │
                                                                      v
    PoolWatch (a ManagerThread): waits on each worker's sentinel and the pipe
      * a worker that exits any other way, an initializer that fails, or a
        Pool thread that dies: ``on_broken(make_error)``, then dismantle;
      * ``close()`` (the backend's work has drained): Pool.close() and join,
        bounded; ``kill()`` (Ctrl-C): dismantle at once.

Dismantling never calls ``Pool.terminate()``: it stops the worker handler,
kills and reaps every worker itself, then unblocks Pool's other threads one
by one, within :data:`DISMANTLE_SECONDS`.

Pool cannot lose one worker either; stopping one task is
:mod:`executors._taskslots`' job, through :meth:`PoolWatch.stop_call`.

This module reads Pool's private parts, the only way to see its workers:
the worker list ``_pool``, the ``Process`` hook through which Pool creates
each worker (``ThreadPool`` overrides it too), its handler threads and
their ``_state``, its queues. They are unchanged from Python 3.8 to 3.13.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import multiprocessing.pool
import multiprocessing.util
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from ._errors import ExecutorFailedError, WorkerCrashedError, describe_exitcode
from ._lifecycle import ManagerThread, manager_failed
from ._outcome import (
    INITIALIZER_FAILED_EXITCODE,
    initializer_error,
)
from ._parentwatch import exit_with_parent
from ._taskslots import TaskSlots

__all__ = [
    "PoolWatch",
    "StatusPipe",
    "WatchedPool",
    "WatchedPoolMixin",
]

_log = logging.getLogger("executors")

# How often the watch checks that Pool's own threads are alive when nothing
# else wakes it. A dead handler thread would otherwise hang every future
# silently; checking costs one wake-up per second.
HEALTH_CHECK_SECONDS = 1.0
# Poll interval while a worker is being started or its exit is being reaped.
POLL_SECONDS = 0.005
# Pool's worker handler reaps a dead worker within milliseconds; the watch
# waits this long for it (reading the exit code concurrently with it can make
# forkserver report 255) before reading the code itself.
REAP_GRACE_SECONDS = 1.0
# A graceful close (workers finish and exit) may take this long before the
# remaining workers are killed.
CLOSE_SECONDS = 5.0
# Bound on dismantling a pool with killed workers: joins, drains, unsticking.
DISMANTLE_SECONDS = 5.0
# Status messages are written with one write() of at most PIPE_BUF bytes,
# which POSIX makes atomic: many workers share the pipe without a lock.
_STATUS_MAX_BYTES = 4000

#: ``on_broken``'s argument: builds the error each unfinished future gets.
MakeError = Callable[[], BaseException]

# -- worker side --------------------------------------------------------------


def _report(status: Connection, kind: bytes, name: str, detail: bytes = b"") -> None:
    message = (kind + b" " + name.encode() + b"\0" + detail)[:_STATUS_MAX_BYTES]
    # The caller may be gone; the worker then ends anyway.
    with contextlib.suppress(OSError):
        status.send_bytes(message)


def start_pool_worker(
    status: Connection,
    caller_pid: int,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    task_slots: TaskSlots | None = None,
) -> None:
    """Pool's initializer in every worker: tie it to the caller, run the user's.

    Reports on the status pipe whether the initializer raised (then exits
    with :data:`~executors._outcome.INITIALIZER_FAILED_EXITCODE`) or the
    worker is ready, and arranges to report a clean exit. With
    ``task_slots``, the worker claims a slot there for
    :func:`~executors._taskslots.run_tracked`.
    """
    exit_with_parent(caller_pid)
    name = multiprocessing.current_process().name
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            summary = f"{type(exc).__qualname__}: {exc}"[:500]
            text = "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__)
            )
            budget = _STATUS_MAX_BYTES - 600
            detail = summary.encode() + b"\0" + text[-budget:].encode()
            _report(status, b"F", name, detail)
            # No traceback on the worker's stderr: the caller raises it.
            raise SystemExit(INITIALIZER_FAILED_EXITCODE) from None
    # Runs when the worker process ends through Python (Pool's loop ended
    # between tasks), not when it is killed or calls os._exit: the caller
    # tells a clean exit (max_tasks_per_child) from a crash by it.
    multiprocessing.util.Finalize(
        None, _report, args=(status, b"X", name), exitpriority=0
    )
    if task_slots is not None:
        task_slots.claim()
    _report(status, b"R", name)


# -- the Pool -----------------------------------------------------------------


class _NotifyOnceClosed:
    """Pool's "the cache is empty" notice, passed on only once Pool is closing.

    Pool's task cache wakes the worker handler each time it empties: after
    every task of a ``submit(...).result()`` loop. The handler then polls
    every worker's exit and competes for the GIL with the very threads that
    carry the result. It needs the notice only to stop once a closed pool
    has drained; ``close()`` and ``terminate()`` wake it themselves.
    """

    def __init__(self, pool: WatchedPoolMixin, notifier: Any) -> None:
        self._pool = pool
        self._notifier = notifier

    def put(self, obj: object) -> None:
        if self._pool._state != multiprocessing.pool.RUN:
            self._notifier.put(obj)


if TYPE_CHECKING:
    _PoolBase = multiprocessing.pool.Pool
else:
    _PoolBase = object


class WatchedPoolMixin(_PoolBase):
    """Makes a Pool (or a Pool subclass) report every worker it creates.

    Put it first in the bases: ``class P(WatchedPoolMixin, MemmappingPool)``.

    Args:
        on_new_worker: Called with each worker process, replacements too,
            in the thread that creates it, before it starts (from
            :meth:`PoolWatch.pool_options`).
        *args: The Pool's arguments.
        **kwargs: The Pool's keyword arguments.
    """

    # Private attributes of Pool the watch reads (see the module docstring).
    _pool: list[BaseProcess]
    _state: str
    _worker_handler: threading.Thread
    _task_handler: threading.Thread
    _result_handler: threading.Thread
    _taskqueue: Any
    _inqueue: Any
    _outqueue: Any
    _change_notifier: Any
    _cache: Any  # a dict with a `notifier`
    _terminate: multiprocessing.util.Finalize

    def __init__(
        self, *args: Any, on_new_worker: Callable[[BaseProcess], None], **kwargs: Any
    ) -> None:
        self._on_new_worker = on_new_worker
        super().__init__(*args, **kwargs)
        self._cache.notifier = _NotifyOnceClosed(self, self._change_notifier)

    # Pool creates every worker (the first ones and each replacement, in its
    # worker handler thread) through this hook.
    def Process(self, ctx: Any, *args: Any, **kwds: Any) -> Any:  # type: ignore[override]
        process = ctx.Process(*args, **kwds)
        self._on_new_worker(process)
        return process

    # Pool's worker handler also wakes whenever a result waits in the
    # outqueue, and loops (polling every worker's exit) until the result
    # handler has read it: under a stream of results it spins, and its GIL
    # time starves the threads that move tasks and results (a map of tiny
    # tasks used twice the CPU in the caller). Worker exits wake it through
    # their sentinels and close/terminate through the change notifier, so
    # this drops only the spin, as ThreadPool does.
    def _get_sentinels(self) -> list[Any]:
        return [self._change_notifier._reader]

    @property
    def handler_threads(self) -> tuple[threading.Thread, ...]:
        """Pool's worker handler, task handler and result handler threads."""
        return (self._worker_handler, self._task_handler, self._result_handler)


class WatchedPool(WatchedPoolMixin, multiprocessing.pool.Pool):
    """A :class:`multiprocessing.pool.Pool` that reports its workers."""


# -- the watch ----------------------------------------------------------------


class StatusPipe:
    """The pipe workers report on; the caller writes to it to wake the watch.

    Every message is one ``write()`` of at most ``PIPE_BUF`` bytes, which
    POSIX makes atomic, so any number of writers share it without a lock.
    """

    def __init__(self, context: BaseContext) -> None:
        self.reader, self.writer = context.Pipe(duplex=False)
        self._lock = threading.Lock()
        self._open = True

    def wake(self) -> None:
        """Wake the watch (an empty message); safe from any thread."""
        with self._lock:
            if self._open:
                with contextlib.suppress(OSError):
                    self.writer.send_bytes(b"")

    def close(self) -> None:
        # Under the lock: a late wake() must never write to a closed (and
        # possibly reused) descriptor.
        with self._lock:
            self._open = False
            self.writer.close()
        self.reader.close()


class _Workers:
    """Every worker process Pool creates, handed over by Pool's own threads."""

    def __init__(self, on_new: Callable[[], None]) -> None:
        self._on_new = on_new
        self._lock = threading.Lock()
        self._new: list[BaseProcess] = []
        self._all: list[BaseProcess] = []  # created and not yet released

    def adopt(self, process: BaseProcess) -> None:
        with self._lock:
            self._new.append(process)
            self._all.append(process)
        self._on_new()

    def take_new(self) -> list[BaseProcess]:
        with self._lock:
            new, self._new = self._new, []
        return new

    def all(self) -> list[BaseProcess]:
        with self._lock:
            return list(self._all)

    def forget(self, process: BaseProcess) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._all.remove(process)


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
        self._workers = _Workers(self.status.wake)
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
    ) -> dict[str, Any]:
        """The keyword arguments the Pool must be created with.

        Args:
            initializer: The user's initializer, run in each worker after
                :func:`start_pool_worker` has tied the worker to the caller.
            initargs: Its arguments.
            task_slots: Lets :meth:`stop_call` stop one task; the backend
                then runs its calls through :func:`~executors._taskslots.run_tracked`.
        """
        self._has_initializer = initializer is not None
        self._slots = task_slots
        status = self.status.writer
        worker_args: tuple[Any, ...] = (status, os.getpid(), initializer, initargs)
        if task_slots is not None:
            worker_args += (task_slots,)
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
                _stop_replacing(pool, deadline)
        for process in self._workers.all():
            _signal_process(process, sig)
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
            None if it could not be stopped (see :mod:`executors._taskslots`).
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
        reader = self.status.reader
        while True:
            try:
                if not reader.poll():
                    return
                message = reader.recv_bytes()
            except (EOFError, OSError):
                return
            kind, _, rest = message.partition(b" ")
            name, _, detail = rest.partition(b"\0")
            who = name.decode(errors="replace")
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
                _kill(self._pool, self._workers.all)
        finally:
            _release(self._pool, self._workers.all())
            self.status.close()
            slots, self._slots = self._slots, None
            if slots is not None:
                slots.close()

    def _close_gracefully(self) -> bool:
        # terminate() may come while the Pool closes (the backend's queue
        # drained because the calls were failed): then stop waiting.
        return _close(self._pool, self._workers.all(), lambda: self._killing)


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


# -- closing a Pool -------------------------------------------------------------


def _close(
    pool: WatchedPoolMixin,
    processes: list[BaseProcess],
    abort: Callable[[], bool] = lambda: False,
) -> bool:
    """Close a Pool whose work has drained; False if it did not end in time.

    Also False as soon as ``abort()`` is true (checked every
    :data:`POLL_SECONDS` or so).
    """
    deadline = time.monotonic() + CLOSE_SECONDS
    pool.close()
    for thread in pool.handler_threads:
        while thread.is_alive() and not abort() and _remaining(deadline):
            thread.join(min(POLL_SECONDS * 10, _remaining(deadline)))
    for process in processes:
        while _is_alive(process) and not abort() and _remaining(deadline):
            _join_process(process, min(POLL_SECONDS * 10, _remaining(deadline)))
    if abort():
        return False
    if any(t.is_alive() for t in pool.handler_threads) or any(
        _is_alive(p) for p in processes
    ):
        # Workers still starting on a loaded machine, or one wedged.
        _log.debug("executors: a Pool did not close in time; killing it")
        return False
    return True


def _stop_replacing(pool: WatchedPoolMixin, deadline: float) -> None:
    """Stop Pool's worker handler: no worker is replaced from now on."""
    terminate = multiprocessing.pool.TERMINATE
    worker_handler, task_handler, _ = pool.handler_threads
    pool._state = terminate
    worker_handler._state = terminate  # type: ignore[attr-defined]
    task_handler._state = terminate  # type: ignore[attr-defined]
    with contextlib.suppress(OSError):
        pool._change_notifier.put(None)
    if worker_handler is not threading.current_thread():
        worker_handler.join(_remaining(deadline))


def _kill(pool: WatchedPoolMixin, workers: Callable[[], list[BaseProcess]]) -> None:
    """Stop a Pool whose workers may be dead or wedged, without blocking.

    ``Pool.terminate()`` can block forever here: on the inqueue lock an
    idle worker held when it was killed, on the outqueue lock a worker held
    when it died mid-send, or on a pipe nobody reads any more. So: stop the
    worker handler (no more replacements), kill and reap every worker, then
    unblock each of Pool's threads in turn.

    Args:
        pool: The Pool.
        workers: Every worker the Pool created; read once the worker
            handler has stopped, so that a replacement it started just
            before is killed too.
    """
    deadline = time.monotonic() + DISMANTLE_SECONDS
    _, task_handler, result_handler = pool.handler_threads
    _stop_replacing(pool, deadline)

    processes = workers()
    for process in processes:
        _kill_process(process)
    for process in processes:
        _join_process(process, _remaining(deadline))

    # The task handler ends on this sentinel (the worker handler sends one
    # too unless it died); then it writes a sentinel to the outqueue and one
    # per worker to the inqueue.
    pool._taskqueue.put(None)
    _unstick(pool._outqueue._wlock)
    _drain_until_dead(pool._inqueue._reader, task_handler, deadline)
    if not task_handler.is_alive():
        # No thread writes to the outqueue any more: closing our end gives
        # the result handler EOF, even mid-message.
        pool._outqueue._writer.close()
    result_handler.join(_remaining(deadline))


def _release(pool: WatchedPoolMixin, processes: list[BaseProcess]) -> None:
    # Never run Pool's own finalizer at exit: terminate() can block.
    pool._terminate.cancel()
    pool._state = multiprocessing.pool.TERMINATE
    if any(t.is_alive() for t in pool.handler_threads):  # pragma: no cover
        _log.warning("executors: a Pool thread did not stop; leaving its pipes")
        return
    for queue in (pool._inqueue, pool._outqueue, pool._change_notifier):
        queue.close()
    # Results that never came (a broken pool) hold their callbacks.
    pool._cache.clear()
    for process in processes:
        if not _is_alive(process):
            with contextlib.suppress(ValueError):
                process.close()


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _join_process(process: BaseProcess, timeout: float) -> None:
    with contextlib.suppress(ValueError):  # closed
        if process.pid is not None:  # started
            process.join(timeout)


def _signal_process(process: BaseProcess, sig: signal.Signals) -> None:
    # Closed, not started, or already gone.
    with contextlib.suppress(ValueError, OSError):
        if process.pid is not None and process.exitcode is None:
            os.kill(process.pid, sig)


def _kill_process(process: BaseProcess) -> None:
    with contextlib.suppress(ValueError, OSError):  # closed, or already gone
        if process.pid is not None and process.exitcode is None:
            process.kill()


def _is_alive(process: BaseProcess) -> bool:
    try:
        return process.is_alive()
    except ValueError:  # closed, or never started
        return False


def _unstick(lock: Any) -> None:
    """Release ``lock`` if a dead worker left it held (every worker is dead)."""
    if lock is None:  # Windows: message pipes need no lock
        return
    if lock.acquire(timeout=0.5):
        lock.release()
        return
    with contextlib.suppress(ValueError):
        lock.release()


def _drain_until_dead(
    reader: Connection, thread: threading.Thread, deadline: float
) -> None:
    """Read and discard raw bytes from ``reader`` until ``thread`` ends.

    Raw bytes, not messages: a worker killed while reading a large task
    leaves the stream mid-message, and a message-level read could then wait
    forever for bytes that never come.
    """
    if sys.platform == "win32":  # pragma: no cover
        # No SIGPIPE there: with its last reader closed, a write fails.
        reader.close()
        return
    fd = reader.fileno()
    while thread.is_alive() and time.monotonic() < deadline:
        if not wait([reader], 0.05):
            continue
        try:
            if not os.read(fd, 1 << 16):
                return
        except OSError:
            return
