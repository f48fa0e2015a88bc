"""asyncio helpers: await a task, ``async for`` over a map.

Every executor's futures already work with :func:`asyncio.wrap_future`; these
helpers cover the common cases and tie cancellation together: cancelling the
asyncio task that awaits cancels the queued work behind it.

Example::

    async def main():
        with executors.create("process", max_workers=2) as ex:
            print(await executors.aio.submit(ex, pow, 2, 10))
            async for value in executors.aio.map(ex, abs, range(-3, 0)):
                print(value)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from ._base import BaseExecutor

__all__ = ["map", "map_unordered", "submit"]

T = TypeVar("T")


async def submit(
    executor: Executor, fn: Callable[..., T], /, *args: Any, **kwargs: Any
) -> T:
    """Submit ``fn(*args, **kwargs)`` and await its result.

    Works with any :class:`concurrent.futures.Executor`. If the awaiting task
    is cancelled, the future is cancelled too (which stops it if it has not
    started).

    Returns:
        The task's result; its exception is raised as ``Future.result()`` would.
    """
    if getattr(executor, "max_pending", None) is None:
        future = executor.submit(fn, *args, **kwargs)
    else:
        future = await _submit_in_a_thread(executor, fn, args, kwargs)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.cancel()
        raise


async def _submit_in_a_thread(
    executor: Executor,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Future[T]:
    # With create(max_pending=N), submit() waits for a free slot: waiting
    # in the event loop's thread would stop every other coroutine.
    abandoned = threading.Event()

    def submit_in_thread() -> Future[T]:
        future = executor.submit(fn, *args, **kwargs)
        if abandoned.is_set():
            # The await was cancelled while submit() waited: cancel the task
            # at once, from this thread, before a worker can take it.
            future.cancel()
        return future

    submitting = asyncio.get_running_loop().run_in_executor(None, submit_in_thread)
    try:
        return await asyncio.shield(submitting)
    except asyncio.CancelledError:
        abandoned.set()
        # Submitted between the check above and now: cancel it when it comes.
        submitting.add_done_callback(_cancel_submitted)
        raise


def _cancel_submitted(submitting: asyncio.Future[Future[Any]]) -> None:
    if not submitting.cancelled() and submitting.exception() is None:
        submitting.result().cancel()


def _require_ours(executor: object) -> BaseExecutor:
    if not isinstance(executor, BaseExecutor):
        raise TypeError(
            "executors.aio.map needs an executor made by executors.create(), "
            f"got {type(executor).__name__}"
        )
    return executor


def map(
    executor: BaseExecutor,
    fn: Callable[..., T],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    chunksize: int | None = None,
    buffersize: int | None = None,
    progress: bool = False,
) -> AsyncIterator[T]:
    """``async for`` over :meth:`executors.Executor.map`, in input order.

    The arguments and their semantics are those of ``Executor.map``; work is
    submitted at the call. Leaving the loop early, or cancelling the task
    that runs it, cancels the chunks that have not started.
    """
    run = _require_ours(executor)._start_map(
        fn, iterables, True, timeout, chunksize, buffersize, progress
    )
    return run.aresults()


def map_unordered(
    executor: BaseExecutor,
    fn: Callable[..., T],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    chunksize: int | None = None,
    buffersize: int | None = None,
    progress: bool = False,
) -> AsyncIterator[T]:
    """``async for`` over results as they complete; see :func:`map`."""
    run = _require_ours(executor)._start_map(
        fn, iterables, False, timeout, chunksize, buffersize, progress
    )
    return run.aresults()
