"""An example backend plugin: a small thread pool written from scratch.

It shows everything a backend writes, and nothing more. The base class
:class:`executors.BaseExecutor` owns the guards of ``submit`` (broken, shut
down, interpreter exiting), argument checks, ``map``, ``map_unordered``,
``progress`` and the context manager; a backend supplies three hooks::

    _submit(fn, args, kwargs) -> Future   # start one task (under the lock)
    _shutdown(wait, cancel_futures)       # release the workers
    _broken_error() -> exception | None   # why submit must refuse, if it must

Data flow::

    submit -> _submit -> work queue -> worker threads -> future.set_result
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import executors

__all__ = ["SimpleThreadExecutor"]

T = TypeVar("T")


@dataclass
class _WorkItem:
    future: Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def run(self) -> None:
        # False means the future was cancelled while it was queued.
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            # Task errors (SystemExit included) belong to the future, as in
            # the stdlib thread pool.
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


class SimpleThreadExecutor(executors.BaseExecutor):
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
    # worker process to crash. Everything else is the default.
    capabilities = executors.Capabilities(process_isolation=False)

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
        self._queue: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._init_error: BaseException | None = None
        self._stopping = False
        self._threads = [
            threading.Thread(
                target=self._work,
                args=(initializer, initargs),
                name=f"simple-threads-{i}",
                # Daemon threads keep the example short; a production
                # backend would join them at interpreter exit, as the
                # stdlib pools do.
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
        future: Future[T] = Future()
        self._queue.put(_WorkItem(future, fn, args, kwargs))
        return future

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            if cancel_futures:
                for item in self._drain():
                    item.future.cancel()
            if not self._stopping:
                self._stopping = True
                # One stop sentinel per thread, behind the queued work, so
                # that wait=False still runs everything already submitted.
                for _ in self._threads:
                    self._queue.put(None)
        if wait:
            current = threading.current_thread()
            for thread in self._threads:
                if thread is not current:  # shutdown() called from a task
                    thread.join()

    def _broken_error(self) -> BaseException | None:
        if self._init_error is None:
            return None
        return self._initializer_failed()

    # -- the workers -------------------------------------------------------

    def _initializer_failed(self) -> executors.InitializerFailedError:
        error = executors.InitializerFailedError(
            f"the initializer raised {type(self._init_error).__name__}: "
            f"{self._init_error}; the executor is not usable"
        )
        error.__cause__ = self._init_error
        return error

    def _drain(self) -> list[_WorkItem]:
        """Take every queued task off the queue; leave the stop sentinels."""
        items = []
        sentinels = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                sentinels += 1
            else:
                items.append(item)
        for _ in range(sentinels):
            self._queue.put(None)
        return items

    def _work(
        self, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
    ) -> None:
        if initializer is not None:
            try:
                initializer(*initargs)
            except Exception as exc:
                with self._lock:
                    # Under the lock that submit holds: no task can be queued
                    # between setting the error and failing the queue.
                    if self._init_error is None:
                        self._init_error = exc
                    executors.fail_futures(
                        (item.future for item in self._drain()),
                        self._initializer_failed,
                    )
                return
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._init_error is not None:
                # Another thread's initializer failed: fail, never run.
                executors.fail_futures([item.future], self._initializer_failed)
                continue
            item.run()
