"""Backend ``thread``: the stdlib :class:`~concurrent.futures.ThreadPoolExecutor`.

For I/O-bound work and for code that releases the GIL. Tasks share the
caller's memory, so nothing is pickled and no crash item of the contract
applies. Behaviour is the stdlib's; ``map`` is the project's shared one.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.thread import BrokenThreadPool
from typing import Any, TypeVar

from .._base import BaseExecutor, notify_cancelled
from .._capabilities import Capabilities
from .._options import check_initializer, check_max_workers, cpu_count

__all__ = ["ThreadExecutor"]

T = TypeVar("T")


class ThreadExecutor(BaseExecutor):
    """A thread pool.

    Args:
        max_workers: Threads; the stdlib's default ``min(32, cpus + 4)``.
        initializer: Called in each thread as it starts.
        initargs: Arguments for ``initializer``.
        thread_name_prefix: Names the threads, for debuggers and logs.
    """

    backend = "thread"
    capabilities = Capabilities(process_isolation=False)

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        thread_name_prefix: str = "executors-thread",
    ) -> None:
        workers = check_max_workers(max_workers, default=min(32, cpu_count() + 4))
        check_initializer(initializer, initargs)
        if not isinstance(thread_name_prefix, str):
            raise TypeError(
                f"thread_name_prefix must be a str, got {thread_name_prefix!r}"
            )
        super().__init__(max_workers=workers)
        self._pool = ThreadPoolExecutor(
            workers, thread_name_prefix, initializer=initializer, initargs=initargs
        )

    def _broken_error(self) -> BaseException | None:
        broken = self._pool._broken
        return BrokenThreadPool(broken) if broken else None

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        return self._pool.submit(fn, *args, **kwargs)

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        if cancel_futures:
            # Drain the queue here rather than in the stdlib, which cancels
            # without notifying, so wait()/as_completed() would hang on these
            # futures (see notify_cancelled). No thread dequeues them now.
            dropped = []
            while True:
                try:
                    item = self._pool._work_queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item.future.cancel()
                    dropped.append(item.future)
            notify_cancelled(dropped)
        self._pool.shutdown(wait, cancel_futures=cancel_futures)
