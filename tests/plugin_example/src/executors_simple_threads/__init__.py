"""An example backend plugin: a small thread pool written from scratch.

It shows everything a backend writes, and nothing more. The base class
:class:`executors.backend.BaseExecutor` owns the guards of ``submit`` (broken, shut
down, interpreter exiting), argument checks, ``map``, ``map_unordered``,
``progress``, the context manager and the interpreter-exit hook; a backend
implements hooks of :class:`executors.backend.BackendHooks`, the two
required ones and two optional ones its threads need::

    _submit(fn, args, kwargs) -> Future   # start one task (under the lock)
    _shutdown(wait, cancel_futures)       # release the workers
    _broken_error() -> exception | None   # why submit must refuse, if it must
    _in_own_task() -> bool                # called from one of its threads?

and puts an :class:`executors.backend.CallQueue` in front of whatever runs the
calls (here, threads). The call queue hands over one call per free thread,
so a queued future still cancels; it settles every future outside its lock
and away from the worker threads, so user callbacks cannot hang the pool;
and it fails everything at once when the pool breaks.

Data flow::

    submit -> _submit -> CallQueue -> launch: work queue -> worker threads
                             ^                                   |
                             +------- calls.settle(call, ...) <--+
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import executors
from executors.backend import BaseExecutor, Call, CallQueue, initializer_error
from executors.backend import Future as OurFuture

__all__ = ["SimpleThreadExecutor"]

T = TypeVar("T")


class SimpleThreadExecutor(BaseExecutor):
    """Runs tasks on a fixed set of threads fed by one FIFO queue.

    Args:
        max_workers: Number of threads; default 4.
        initializer: Called in each thread before its first task. If it
            raises, the executor is broken: queued and later tasks fail with
            :class:`executors.InitializerFailedError`.
        initargs: Arguments for ``initializer``.
    """

    backend = "simple_threads"
    # Threads share the caller's memory: nothing is pickled, and there is no
    # worker process to crash. The call queue gives task timeouts and
    # retries for free (a thread cannot be stopped: a timed-out task is
    # abandoned). Everything else is the default.
    capabilities = executors.Capabilities(process_isolation=False, task_control=True)

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        # Validate eagerly, naming the option, as every backend does.
        if max_workers is None:
            max_workers = 4
        if not isinstance(max_workers, int) or isinstance(max_workers, bool):
            raise TypeError(f"max_workers must be an int or None, got {max_workers!r}")
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError(
                f"initializer must be callable or None, got {initializer!r}"
            )
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, got {type(initargs).__name__}")
        super().__init__(max_workers=max_workers)
        self._work_queue: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        # One call per thread; when closed and drained, stop the threads.
        self._calls = CallQueue(
            self._work_queue.put, max_workers, on_idle=self._stop_threads
        )
        self._threads = [
            threading.Thread(
                target=self._work,
                args=(initializer, initargs),
                name=f"simple-threads-{i}",
                daemon=True,
            )
            for i in range(max_workers)
        ]
        for thread in self._threads:
            thread.start()

    # -- the hooks --------------------------------------------------------

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        future: OurFuture[T] = OurFuture()
        self._calls.submit(future, (fn, args, kwargs))
        return future

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        # Queued calls still run (unless cancelled); the threads stop once
        # the call queue is idle (_stop_threads).
        self._calls.close(cancel_futures)
        if wait:
            if threading.current_thread() in self._threads:
                # A task would wait for its own end; the stdlib's thread
                # pool raises here too. The shutdown stands.
                raise RuntimeError(
                    "shutdown(wait=True) was called from a task of this "
                    "executor, which would wait for itself"
                )
            for thread in self._threads:
                thread.join()

    def _broken_error(self) -> BaseException | None:
        return self._calls.broken_error()

    def _in_own_task(self) -> bool:
        # Tasks run in threads of the caller's process: a task that submits
        # at the max_pending bound must raise, not wait for a slot that the
        # thread it runs in may be the one to free.
        return threading.current_thread() in self._threads

    # -- the workers -------------------------------------------------------

    def _stop_threads(self) -> None:
        for _ in self._threads:
            self._work_queue.put(None)

    def _work(
        self, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
    ) -> None:
        if initializer is not None:
            try:
                initializer(*initargs)
            except Exception as exc:
                self._calls.break_(
                    functools.partial(
                        initializer_error,
                        self.backend,
                        None,
                        cause=exc,
                        where="in a thread",
                    )
                )
                self._stop_threads()
                return
        while True:
            call = self._work_queue.get()
            if call is None:
                return
            self._run(call)
            # Hold nothing of a finished task while waiting for the next.
            del call

    def _run(self, call: Call) -> None:
        if call.future.done():
            # Failed by the call queue while it waited here (a timeout,
            # terminate_workers()): nothing is waiting for it any more.
            return
        fn, args, kwargs = call.payload
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            # Task errors (SystemExit included) belong to the future, as in
            # the stdlib thread pool.
            self._calls.settle(call, error=exc)
        else:
            self._calls.settle(call, value)
