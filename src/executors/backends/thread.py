"""Backend ``thread``: a thread pool, as the stdlib's ``ThreadPoolExecutor``.

For I/O-bound work and for code that releases the GIL. Tasks share the
caller's memory, so nothing is pickled and no crash item of the contract
applies. The constructor, the lazily started threads, their names and a
failing initializer (:class:`~concurrent.futures.thread.BrokenThreadPool`)
are the stdlib's; ``map`` is the project's shared one.

The threads take calls straight from a
:class:`~executors._callqueue.CallQueue` (one call per thread at a time) and
settle them themselves, so the futures handed out are the project's, and
there is no second, stdlib future per call to copy from: a queued future
cancels and notifies ``wait()``, a done-callback that raises ``SystemExit``
cannot kill a pool thread, and one that waits on another future of this
executor does not block the thread that would run it.

Each thread is a worker (:mod:`executors._workers`): ``worker_id()`` is
its number, ``worker_state()`` its own dict, and ``finalizer`` runs in it
when it ends. Its log records are already in the caller's process.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.thread import BrokenThreadPool
from queue import SimpleQueue
from typing import Any, TypeVar

from .._base import BaseExecutor
from .._callqueue import Call, CallQueue
from .._capabilities import Capabilities
from .._futures import Future as OurFuture
from .._lifecycle import join_unless_current, shutdown_from_own_task_error
from .._options import check_initializer, check_max_workers, cpu_count
from .._workers import (
    ProcessWideCap,
    WorkerContext,
    WorkerSettings,
    enter_thread,
    leave_thread,
)

__all__ = ["ThreadExecutor"]

T = TypeVar("T")

# The stdlib's logger and words, so logging set up for its pool sees ours.
_LOGGER = logging.getLogger("concurrent.futures")
_BROKEN_BY_INITIALIZER = (
    "A thread initializer failed, the thread pool is not usable anymore"
)


class _Threads:
    """The worker threads: each runs one call at a time and settles it.

    Holds no reference to the executor, so an executor dropped without
    ``shutdown()`` is collected and its threads still finish the work.
    """

    def __init__(
        self,
        max_threads: int,
        name_prefix: str,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        settings: WorkerSettings,
    ) -> None:
        self.calls: CallQueue  # set by the executor, before the first launch
        self._settings = settings
        self._max = max_threads
        self._name_prefix = name_prefix
        self._initializer = initializer
        self._initargs = initargs
        self._work: SimpleQueue[Call | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Calls handed to the threads and not finished: a new thread starts
        # only when every thread has one, as the stdlib's pool starts them.
        self._busy = 0
        self._stopped = False
        self._broken = False

    def launch(self, call: Call) -> None:
        # Queued before a new thread starts, so that it finds the call at
        # once instead of going to sleep first.
        self._work.put(call)
        with self._lock:
            self._busy += 1
            if self._busy > len(self._threads) and len(self._threads) < self._max:
                number = len(self._threads)
                thread = threading.Thread(
                    target=self._run,
                    args=(number,),
                    name=f"{self._name_prefix}_{number}",
                )
                # Started under the lock, so a join() that follows sees it.
                thread.start()
                self._threads.append(thread)

    def _run(self, number: int) -> None:
        settings = self._settings
        # Threads never die and are never replaced: a thread's number is
        # its slot. Entered before the initializer, which may fill the state.
        context = WorkerContext(number, None, settings.finalizer, settings.finalargs)
        enter_thread(context)
        try:
            self._serve()
        finally:
            if self._broken:
                # Not a normal exit: the initializer failed, the finalizer
                # has nothing to undo.
                context.finalizer = None
            leave_thread()

    def _serve(self) -> None:
        calls = self.calls
        if self._initializer is not None:
            try:
                self._initializer(*self._initargs)
            except BaseException:
                _LOGGER.critical("Exception in initializer:", exc_info=True)
                self._broken = True
                calls.break_(
                    functools.partial(BrokenThreadPool, _BROKEN_BY_INITIALIZER)
                )
                # The calls already handed over were failed: drop them as
                # they come, with every other thread, until stopped.
        get = self._work.get
        while (call := get()) is not None:
            if not self._broken:
                try:
                    fn, args, kwargs = call.payload
                    value = fn(*args, **kwargs)
                except BaseException as exc:
                    calls.settle(call, error=exc)
                else:
                    calls.settle(call, value)
                # No reference to a finished task while waiting for the next.
                fn = args = kwargs = value = None
            call = None
            with self._lock:
                self._busy -= 1

    def stop(self) -> None:
        """Let every thread end once the calls handed over are done."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            count = len(self._threads)
        for _ in range(count):
            self._work.put(None)

    def runs_in_current_thread(self) -> bool:
        """True when called from one of these threads (from a task)."""
        return threading.current_thread() in self._threads

    def join(self) -> None:
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            join_unless_current(thread)


class ThreadExecutor(BaseExecutor):
    """A thread pool.

    Args:
        max_workers: Threads; the stdlib's default ``min(32, cpus + 4)``.
        initializer: Called in each thread as it starts.
        initargs: Arguments for ``initializer``.
        thread_name_prefix: Names the threads, for debuggers and logs.
        finalizer: Called in each thread as it ends (at shutdown); an
            exception there is logged on ``executors.workers``.
        finalargs: Arguments for ``finalizer``.
        threads_per_worker: Cap the BLAS/OpenMP thread pools at this many
            threads while the executor is open. Those pools are
            process-wide, so the cap is the caller's too, and applies only
            when asked for (``"auto"`` and ``None``: no cap).
        forward_logs: Accepted for the shared signature: a task's records
            are in the caller's logging tree already.
    """

    backend = "thread"
    capabilities = Capabilities(
        process_isolation=False,
        task_control=True,
        worker_identity=True,
        worker_finalizer=True,
        # Tasks log in the caller's process: their records are there already.
        forwards_logs=True,
        limits_worker_threads=True,
        nested_executors=True,
    )
    _calls: CallQueue

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        thread_name_prefix: str = "executors-thread",
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        threads_per_worker: int | str | None = "auto",
        forward_logs: bool = True,
    ) -> None:
        workers = check_max_workers(max_workers, default=min(32, cpu_count() + 4))
        check_initializer(initializer, initargs)
        if not isinstance(thread_name_prefix, str):
            raise TypeError(
                f"thread_name_prefix must be a str, got {thread_name_prefix!r}"
            )
        settings = WorkerSettings(
            workers=workers,
            finalizer=finalizer,
            finalargs=finalargs,
            threads_per_worker=threads_per_worker,
            forward_logs=forward_logs,
            in_process=True,
        )
        super().__init__(max_workers=workers)
        self._thread_cap: ProcessWideCap | None = None
        if settings.threads is not None:
            self._thread_cap = ProcessWideCap(settings.threads)
        threads = _Threads(workers, thread_name_prefix, initializer, initargs, settings)
        # One call per thread: a thread that finishes launches the next call
        # itself, as it settles the last one.
        calls = CallQueue(threads.launch, workers, on_idle=threads.stop)
        threads.calls = calls
        self._calls = calls
        self._threads = threads
        # Dropped without shutdown(): the work still runs, then the threads end.
        self._close_when_collected(calls.close)

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        future: OurFuture[T] = OurFuture()
        self._calls.submit(future, (fn, args, kwargs))
        return future

    def _in_own_task(self) -> bool:
        return self._threads.runs_in_current_thread()

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self._calls.close(cancel_futures)
        if wait:
            if self._threads.runs_in_current_thread():
                raise shutdown_from_own_task_error()
            self._calls.wait_idle()
            self._threads.join()
        # Without wait, the tasks still running lose the cap: it is the
        # caller's too, and nothing else would undo it.
        cap, self._thread_cap = self._thread_cap, None
        if cap is not None:
            cap.restore()
