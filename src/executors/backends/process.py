"""Backend ``process``: the stdlib :class:`~concurrent.futures.ProcessPoolExecutor`.

Behaviour is the stdlib's where the stdlib defines it: a worker that dies
breaks the pool for good and every pending future fails, with
:class:`~executors.WorkerCrashedError` (a ``BrokenProcessPool``, naming the
exit code). What the project adds: a :class:`~executors.CallQueue` in front
of the stdlib pool (queued futures cancel exactly, callbacks cannot hang it),
each call carried as bytes of our own (:mod:`executors._outcome`: an
argument or a result that fails to unpickle fails its task, not the pool),
the shared ``map`` (automatic chunking, lazy ``buffersize``,
``map_unordered``, progress), callables sent with cloudpickle, a safe
default start method (see :data:`executors._options.DEFAULT_START_METHOD`),
workers that exit when the process owning the pool dies (even by SIGKILL),
a program ended by Ctrl-C that stops its running tasks instead of waiting
for them, task timeouts (abandoned: the stdlib cannot stop one task) and
retries, ``terminate_workers()``, and a fix for ``max_tasks_per_child``
hanging with a backlog (CPython gh-115634).
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import (
    BrokenProcessPool,
    _ExecutorManagerThread,
    _process_worker,
    _threads_wakeups,
)
from multiprocessing.context import BaseContext
from typing import Any, TypeVar, cast

from .. import _shm
from .._base import BaseExecutor
from .._callqueue import Call, CallQueue
from .._capabilities import Capabilities
from .._errors import (
    ExecutorFailedError,
    InitializerFailedError,
    WorkerCrashedError,
    describe_exitcode,
)
from .._forkserver import preload_in_forkserver
from .._lifecycle import join_unless_current
from .._map import Chunk, ChunkResult
from .._options import check_process_pool_options, cpu_count, start_method_of
from .._outcome import (
    INITIALIZER_FAILED_EXITCODE,
    WorkerBootstrap,
    initializer_error,
    run_call,
)
from .._workers import WorkerSettings
from .._workers._pools import RecyclingProcessPool

__all__ = ["ProcessExecutor"]

T = TypeVar("T")

# The stdlib caps workers at 61 on Windows (WaitForMultipleObjects); the same
# default keeps behaviour identical everywhere.
_MAX_DEFAULT_WORKERS = 61

# CPython gh-115634: with max_tasks_per_child, a worker that exits at its
# limit is not replaced while a stale idle-worker token is left, and the
# backlog then waits for good (3.11 to 3.13.0 at least). The upstream fix
# (gh-140900, backported to 3.13) replaces an exited worker without looking
# at the semaphore, which _Pool does here; a fixed Python no longer calls
# _adjust_process_count on a worker's exit, so the override is then inert.
_REPLACEMENT_BUG = (3, 11) <= sys.version_info[:2] <= (3, 13)
# CPython gh-94777 (fixed in 3.11): when a worker dies while the call
# queue's feeder thread is blocked writing a large call into the pipe, the
# 3.10 manager thread joins that feeder for ever, because the parent still
# holds the pipe's read end and so the write never fails. The fix closes the
# read end once the workers are terminated; _BrokenPoolManager backports it.
_FEEDER_HANG_BUG = sys.version_info < (3, 11)
# Calls handed to the stdlib pool and not yet finished, per worker.
DISPATCH_PER_WORKER = 2


class _BrokenPoolManager(_ExecutorManagerThread):
    """3.10's manager thread with gh-94777's fix: a broken pool never hangs."""

    def terminate_broken(self, cause: Any) -> None:
        # Closing the parent's read end before the stdlib terminates the
        # workers is as good as after: the feeder's write fails (EPIPE) once
        # the workers, the other readers, are gone, and the stdlib's feeder
        # swallows that error and moves on to its sentinel.
        self.call_queue._reader.close()  # type: ignore[attr-defined]
        super().terminate_broken(cause)


class _Pool(ProcessPoolExecutor):
    """The stdlib pool, with exited workers always replaced (gh-115634)."""

    def _adjust_process_count(self) -> None:
        manager = threading.current_thread()
        # The manager thread calls this only when a worker exited at its
        # max_tasks_per_child limit; submit() calls it from other threads.
        if _REPLACEMENT_BUG and isinstance(manager, _ExecutorManagerThread):
            self._replace_exited_worker(manager)
        else:
            super()._adjust_process_count()

    if _FEEDER_HANG_BUG:

        def _start_executor_manager_thread(self) -> None:
            # 3.10's own body, with the manager class swapped (gh-94777).
            pool: Any = self
            if pool._executor_manager_thread is None:
                if not pool._safe_to_dynamically_spawn_children:
                    pool._launch_processes()
                manager = _BrokenPoolManager(self)
                pool._executor_manager_thread = manager
                manager.start()
                _threads_wakeups[manager] = pool._executor_manager_thread_wakeup

    def _replace_exited_worker(self, manager: _ExecutorManagerThread) -> None:
        # The manager's own references: shutdown(wait=False) sets the
        # executor's to None while the manager still runs the backlog.
        # (typeshed declares neither the pool's options nor its context.)
        pool: Any = self
        processes = manager.processes
        if len(processes) >= pool._max_workers:
            return
        worker = pool._mp_context.Process(
            target=_process_worker,
            args=(
                manager.call_queue,
                manager.result_queue,
                pool._initializer,
                pool._initargs,
                pool._max_tasks_per_child,
            ),
        )
        worker.start()
        processes[worker.pid] = worker


class _RecyclingPool(RecyclingProcessPool, _Pool):
    """_Pool whose workers are recycled by their spec, a spare started ahead."""


class ProcessExecutor(BaseExecutor):
    """A pool of worker processes run by the stdlib.

    Args:
        max_workers: Worker processes; default: the usable CPUs (at most 61).
        mp_context: Start method name or multiprocessing context; default
            ``"forkserver"`` on POSIX.
        initializer: Called in each worker as it starts; if it raises, the
            pool is broken.
        initargs: Arguments for ``initializer``.
        max_tasks_per_child: Replace a worker after this many tasks
            (Python 3.11+).
        cloudpickle: Send the callable with cloudpickle (lambdas work).
        shm_threshold: Buffers of arguments and results (NumPy arrays) of at
            least this many bytes travel through shared memory; ``None``:
            through the pipe (see ``docs/large-data.md``).
    """

    backend = "process"
    # Timeouts are abandoned: the stdlib pool cannot stop one task without
    # breaking itself.
    capabilities = Capabilities(
        task_control=True,
        terminates_workers=True,
        shared_memory=True,
        worker_identity=True,
        worker_finalizer=True,
        recycles_workers=True,
        forwards_logs=True,
        limits_worker_threads=True,
        nested_executors=True,
    )
    _calls: CallQueue

    @classmethod
    def _workers_start_method(cls, options: Mapping[str, Any]) -> str:
        """How the workers start, for :mod:`executors._mainmodule`."""
        return start_method_of(options.get("mp_context"))

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        mp_context: str | BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        cloudpickle: bool = True,
        shm_threshold: int | None = _shm.DEFAULT_THRESHOLD,
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        threads_per_worker: int | str | None = "auto",
        forward_logs: bool = True,
        max_memory_per_child: int | str | None = None,
    ) -> None:
        threshold = _shm.check_threshold(shm_threshold)
        workers, context, per_child = check_process_pool_options(
            max_workers=max_workers,
            default_workers=min(_MAX_DEFAULT_WORKERS, cpu_count()),
            mp_context=mp_context,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
        )
        settings = WorkerSettings(
            workers=workers,
            finalizer=finalizer,
            finalargs=finalargs,
            threads_per_worker=threads_per_worker,
            forward_logs=forward_logs,
            max_memory_per_child=max_memory_per_child,
            max_tasks_per_child=per_child,
        )
        recycles = settings.max_tasks is not None or settings.max_memory is not None
        if recycles and sys.version_info < (3, 11):
            raise ValueError(
                "the 'process' backend supports max_tasks_per_child and "
                "max_memory_per_child on Python 3.11 and later only"
            )
        super().__init__(max_workers=workers, cloudpickle=cloudpickle)
        if initializer is not None:
            initializer = self._prepare(initializer)
        if finalizer is not None:
            settings.finalizer = self._prepare(finalizer)
        # Workers (and their replacements) fork ready, not importing us.
        preload_in_forkserver(context)
        self._workers = settings
        self._manager: threading.Thread | None = None
        # The signal terminate_workers()/kill_workers() sent, if any.
        self._ending_signal: signal.Signals | None = None
        # Recycling: workers leave when their spec says so, a spare started
        # ahead of each (executors._workers._pools).
        pool_class = _RecyclingPool if recycles else _Pool
        self._pool = pool_class(
            workers,
            context,
            WorkerBootstrap(os.getpid(), initializer, initargs, settings.spec()),
            (),
        )
        self._crash: BaseException | None = None
        # The stdlib keeps max_workers + 1 calls in its pipe; two per worker
        # here keep every worker fed while the rest wait where cancel() works.
        self._calls = CallQueue(
            self._launch,
            DISPATCH_PER_WORKER * workers,
            on_idle=self._release,
            translate=self._translate,
            slots=workers,
        )
        self._calls.shm_threshold = threshold
        # Results come back the same way: run_call's extra arguments.
        self._reply: tuple[Any, ...] = ()
        if threshold is not None:
            self._reply = (False, None, threshold)

    def _broken_error(self) -> BaseException | None:
        broken = self._pool._broken
        if broken:
            return self._translate(BrokenProcessPool(broken))
        return self._calls.broken_error()

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        return self._calls.submit_pickled(fn, args, kwargs)

    def _submit_chunk(
        self, fn: Callable[..., Any], chunk: Chunk
    ) -> Future[ChunkResult]:
        # Pickled by the library's task-feeding thread (see submit_chunk).
        return self._calls.submit_chunk(fn, chunk)

    def _launch(self, call: Call) -> None:
        broken = self._pool._broken
        if broken:
            # Checked here, not by submit(): the stdlib's manager fails its
            # futures while holding the lock submit() takes (3.12+), and
            # this runs from those futures' callbacks.
            raise BrokenProcessPool(broken)
        theirs = self._pool.submit(run_call, call.payload, *self._reply)
        # Settled in the stdlib's manager thread (or its feeder thread, for
        # a chunk that failed to pickle).
        self._calls.settle_when_done(
            call, theirs, self._translate, outcome=True, dropped=_dropped
        )

    def _translate(self, error: BaseException) -> BaseException:
        """The stdlib's BrokenProcessPool, said the way every backend says it."""
        if not isinstance(error, BrokenProcessPool) or isinstance(
            error, (WorkerCrashedError, InitializerFailedError)
        ):
            return error
        if self._crash is None:
            self._crash = _crash_error(self._pool, self._manager, error)
        crash = self._crash
        copy: BaseException
        if isinstance(crash, WorkerCrashedError):
            copy = WorkerCrashedError(str(crash), crash.exitcode)
        else:
            copy = type(crash)(str(crash))
        copy.__cause__ = error
        return copy

    def _signal_workers(self, sig: signal.Signals) -> None:
        self._ending_signal = sig
        self._remember_manager()
        # The manager thread keeps the workers after shutdown() drops the
        # pool's own reference to them.
        processes = (
            getattr(self._manager, "processes", None) or self._pool._processes or {}
        )
        for proc in list(processes.values()):
            # It may have exited, or been closed, since the copy.
            with contextlib.suppress(ValueError, OSError, ProcessLookupError):
                if proc.pid is not None and proc.exitcode is None:
                    os.kill(proc.pid, sig)

    def _join_ending_manager(self, sig: signal.Signals) -> None:
        # After terminate_workers()/kill_workers(). With max_tasks_per_child
        # the stdlib's manager thread may start a replacement worker after
        # the signal went out; that worker then waits for the call queue's
        # lock, which a signalled worker may have died holding, and the
        # manager thread waits for it forever. Signal again whatever is
        # still alive until the manager thread has seen every worker go.
        manager = self._manager
        while manager is not None and manager.is_alive():
            manager.join(RESIGNAL_SECONDS)
            if manager.is_alive():
                self._signal_workers(sig)

    def _release(self) -> None:
        # Every call has settled and no more will come: let the stdlib pool
        # go (its manager thread ends once its own queue is empty).
        self._remember_manager()
        self._pool.shutdown(wait=False)
        # Its thread ends once the workers have sent their last records.
        self._workers.close(wait=False)

    def _remember_manager(self) -> None:
        # The stdlib drops its manager thread on the first shutdown(), so a
        # later shutdown(wait=True) would not wait: keep our own reference.
        # (typeshed mistypes _executor_manager_thread as _ThreadWakeup.)
        current = cast("threading.Thread | None", self._pool._executor_manager_thread)
        if current is not None:
            self._manager = current

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self._calls.close(cancel_futures)
        if not wait:
            return
        # Not from a done-callback of the stdlib's own manager thread.
        self._remember_manager()
        if self._manager is threading.current_thread():
            return
        self._calls.wait_idle()
        self._remember_manager()
        sig = self._ending_signal
        if sig is None:
            self._pool.shutdown(wait=True)
            join_unless_current(self._manager)
        else:
            self._pool.shutdown(wait=False)
            self._join_ending_manager(sig)
        # Done with it: the thread object holds the pool's pipes and the
        # workers' sentinels, which must close with the pool.
        self._manager = None
        # The workers are gone: so is what they sent; our free segments go too.
        _shm.trim()
        self._workers.close(wait=True)


# Bounds the wait for a worker whose sentinel is ready to be reaped; it is
# exiting already, so this is reached only on a badly loaded machine.
SENTINEL_TO_REAP_SECONDS = 1.0
# How often the workers are signalled again while terminate_workers() or
# kill_workers() waits for the stdlib's manager thread: a replacement
# started after the first signal is stopped within this.
RESIGNAL_SECONDS = 0.2


def _dropped() -> ExecutorFailedError:
    return ExecutorFailedError(
        "the stdlib process pool dropped a task it had accepted; the 'process' "
        "executor is shutting down or broken"
    )


def _crash_error(
    pool: ProcessPoolExecutor,
    manager: threading.Thread | None,
    error: BrokenProcessPool,
) -> BaseException:
    """Why the stdlib pool broke, from its workers' exit codes.

    Read in the manager thread as it fails the futures, before it
    terminates the surviving workers: the dead worker's code is known.
    """
    processes: dict[int, Any] = dict(
        getattr(manager, "processes", None) or pool._processes or {}
    )
    codes = []
    for proc in processes.values():
        with contextlib.suppress(ValueError):
            if proc.exitcode is None and multiprocessing.connection.wait(
                [proc.sentinel], 0
            ):
                # Under spawn the sentinel is a pipe the worker closes as
                # it exits, a moment before it can be reaped.
                proc.join(SENTINEL_TO_REAP_SECONDS)
            codes.append((proc.exitcode, proc.pid))
    if any(code == INITIALIZER_FAILED_EXITCODE for code, _ in codes):
        pid = next(pid for code, pid in codes if code == INITIALIZER_FAILED_EXITCODE)
        return initializer_error("process", pid, exitcode=INITIALIZER_FAILED_EXITCODE)
    died = [(code, pid) for code, pid in codes if code not in (None, 0)]
    code, pid = died[0] if died else (None, None)
    where = f"a worker process (pid {pid})" if pid is not None else "a worker process"
    return WorkerCrashedError(
        f"{where} of the 'process' executor died with {describe_exitcode(code)}; "
        "the pool is broken, as the stdlib's is: every unfinished task failed "
        f"and no new task can be submitted ({error})",
        code,
    )
