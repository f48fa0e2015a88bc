"""Backend ``thread``: the stdlib :class:`~concurrent.futures.ThreadPoolExecutor`.

For I/O-bound work and for code that releases the GIL. Tasks share the
caller's memory, so nothing is pickled and no crash item of the contract
applies. Behaviour is the stdlib's; ``map`` is the project's shared one.

Calls reach the stdlib pool through a :class:`~executors._callqueue.CallQueue`
(one call per thread at a time), so the futures handed out are the project's:
a queued one cancels and notifies ``wait()``, a done-callback that raises
``SystemExit`` cannot kill a pool thread, and one that waits on another
future of this executor does not block the thread that would run it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.thread import BrokenThreadPool
from typing import Any, TypeVar

from .._base import BaseExecutor
from .._callqueue import Call, CallQueue
from .._capabilities import Capabilities
from .._futures import Future as OurFuture
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
    capabilities = Capabilities(process_isolation=False, task_control=True)
    _calls: CallQueue

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
        # One call per thread: a thread that finishes takes the next call
        # itself, in the done-callback that settles the last one. The stdlib
        # pool stops taking work once ours has handed over the last call.
        self._calls = CallQueue(self._launch, workers, on_idle=self._release)

    def _broken_error(self) -> BaseException | None:
        broken = self._pool._broken
        if broken:
            return BrokenThreadPool(broken)
        return self._calls.broken_error()

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        future: OurFuture[T] = OurFuture()
        self._calls.submit(future, (fn, args, kwargs))
        return future

    def _launch(self, call: Call) -> None:
        broken = self._pool._broken
        if broken:
            # Checked here, not by submit(): the stdlib fails its queued
            # futures when an initializer fails while holding the lock that
            # submit() takes, and this runs from those futures' callbacks.
            raise BrokenThreadPool(broken)
        fn, args, kwargs = call.payload
        self._calls.settle_when_done(call, self._pool.submit(fn, *args, **kwargs))

    def _release(self) -> None:
        self._pool.shutdown(wait=False)

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self._calls.close(cancel_futures)
        if wait:
            self._calls.wait_idle()
            self._pool.shutdown(wait=True)
