"""The one implementation of ``map`` and ``map_unordered`` for every backend.

A backend supplies only "submit one task" and "submit one chunk"; this module
decides chunk sizes, how much input to read ahead, the order of results,
timeouts, cancellation of unstarted work and the progress bar.

Two ways to read the input:

* eager (``buffersize=None``, the stdlib's semantics): the whole input is read
  and every chunk submitted at the call. Chunk sizes come from the input's
  length alone, since no task has run yet: one item per task on short inputs,
  then *guided* chunks (each a fixed share of what remains) that shrink
  towards the end so the last workers to finish are never left with a big
  chunk.
* lazy (``buffersize=N``): at most ``N`` items are read and not yet yielded.
  Chunks start at one item and grow while measured task times show they are
  cheap, so slow tasks keep per-item granularity and tiny ones get batched.
"""

from __future__ import annotations

import functools
import itertools
import queue
import time
from collections import deque
from collections.abc import (
    AsyncGenerator,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from ._chunkplan import (
    CHUNKS_IN_FLIGHT_PER_WORKER,
    PER_ITEM_ITEMS_PER_WORKER,
    plan_chunks,
)
from ._chunkplan import AdaptiveChunker as _AdaptiveChunker
from ._chunks import Chunk, ChunkResult, run_chunk
from ._control import TaskOptions, submitting
from ._futures import add_internal_callback

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "PER_ITEM_ITEMS_PER_WORKER",
    "Chunk",
    "ChunkResult",
    "EngineMap",
    "MapIterator",
    "MapRun",
    "MapSource",
    "plan_chunks",
    "run_chunk",
    "start_map",
]

T = TypeVar("T")


class MapSource(Protocol):
    """What the map machinery needs from an executor."""

    def _map_workers(self) -> int: ...

    def _submit_map_item(
        self, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> Future[Any]: ...

    def _submit_chunk_task(
        self, fn: Callable[..., Any], chunk: Chunk
    ) -> Future[ChunkResult]: ...


class MapIterator(itertools.chain[T]):
    """What ``map`` and ``map_unordered`` return: an iterator over the results.

    A C-level chain over the values each finished task brings, so handing
    out one result costs a C-level step rather than resuming a Python
    generator (a quarter of the time, which a map of tiny tasks feels), and
    it keeps no reference to a value once handed out. Closing it, or
    dropping it, stops the map as closing the stdlib's generator does: work
    not yet started is cancelled.
    """

    __slots__ = ("_batches",)
    _batches: Generator[Iterator[T], None, None]

    @classmethod
    def start(cls, batches: Generator[Iterator[T], None, None]) -> MapIterator[T]:
        iterator = cast("MapIterator[T]", cls.from_iterable(batches))
        iterator._batches = batches
        return iterator

    def close(self) -> None:
        """Stop the map: cancel the work it has not started."""
        self._batches.close()


_END = object()


def _handing_over(values: list[Any]) -> Iterator[Any]:
    """Iterate ``values``, dropping each from the list as it is handed out.

    A list iterator would keep every value already yielded alive until the
    whole list is used up; a caller streaming large results must be able to
    free each one as it goes. Popping from the end of the reversed list
    stays a C-level step per value, and compares no value with anything
    (a sentinel test would call a numpy array's ``==``).
    """
    values.reverse()
    # pop() without an argument: a quarter cheaper per value than pop(-1).
    return itertools.starmap(values.pop, itertools.repeat((), len(values)))


class EngineMap:
    """A map that a backend's own engine runs (see ``BaseExecutor._engine_map``).

    Gives it the two faces of :class:`MapRun`: blocking iteration, and
    ``async for`` (each next result is fetched in a worker thread, so the
    event loop never blocks; cancelling the awaiting task closes the map).
    """

    def __init__(self, iterator: Iterator[Any]) -> None:
        self._iterator = iterator

    def results(self) -> Iterator[Any]:
        return self._iterator

    async def aresults(self) -> AsyncGenerator[Any, None]:
        import asyncio

        iterator = self._iterator
        try:
            while True:
                value = await asyncio.to_thread(next, iterator, _END)
                if value is _END:
                    return
                yield value
                del value
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


@dataclass(eq=False)
class _Task:
    future: Future[Any]
    size: int
    chunked: bool


@dataclass
class MapRun:
    """One map in progress: its submitted tasks, its input and its bounds."""

    source: MapSource
    fn: Callable[..., Any]
    # Bare items when `star` is false (one iterable), else argument tuples.
    args: Iterator[Any]
    star: bool
    ordered: bool
    deadline: float | None
    buffersize: int | None
    chunker: _AdaptiveChunker | None
    workers: int = 1
    bar: Any = None
    # Ordered maps wait on the oldest task; unordered ones on whichever ends
    # first, reported through `done` by a callback (no O(n) wait() per item).
    pending: deque[_Task] = field(default_factory=deque)
    outstanding: set[_Task] = field(default_factory=set)
    done: queue.SimpleQueue[_Task] = field(default_factory=queue.SimpleQueue)
    in_buffer: int = 0
    exhausted: bool = False
    wakeup: Callable[[], object] | None = None
    # Timeouts and retries: they apply per item, so each item is a task.
    options: TaskOptions | None = None

    def submit(self, chunk: Chunk, chunked: bool) -> None:
        chunked = chunked and self.options is None
        with submitting(self.options):
            if chunked:
                fut: Future[Any] = self.source._submit_chunk_task(self.fn, chunk)
            else:
                fut = self.source._submit_map_item(self.fn, chunk.args(0))
        task = _Task(fut, len(chunk), chunked)
        if self.ordered:
            self.pending.append(task)
        else:
            self.outstanding.add(task)
        self.in_buffer += len(chunk)
        if not self.ordered or self.bar is not None:
            add_internal_callback(fut, functools.partial(self._on_done, task))

    def _on_done(self, task: _Task, _future: Future[Any]) -> None:
        if self.bar is not None and not task.future.cancelled():
            self.bar.update(task.size)
        if not self.ordered:
            self.done.put(task)
            wakeup = self.wakeup
            if wakeup is not None:
                wakeup()

    def cancel_all(self) -> None:
        for task in itertools.chain(self.pending, self.outstanding):
            task.future.cancel()

    def fill(self) -> None:
        """Read and submit input until the buffer bound is reached."""
        if self.chunker is None or self.buffersize is None:
            return
        while not self.exhausted:
            in_flight = len(self.pending) + len(self.outstanding)
            if in_flight >= CHUNKS_IN_FLIGHT_PER_WORKER * self.workers:
                return
            size = self.chunker.next_size()
            # Wait for room for a whole chunk rather than topping the buffer
            # up item by item: that would pin chunks at one item for good.
            if self.buffersize - self.in_buffer < size:
                return
            items = list(itertools.islice(self.args, size))
            if len(items) < size:
                self.exhausted = True
            if items:
                self.submit(Chunk(items, self.star), chunked=True)

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()

    def next_task(self) -> _Task:
        if self.ordered:
            task = self.pending[0]
            self._wait(task)
            self.pending.popleft()
            return task
        try:
            timeout = self.remaining()
            task = self.done.get(timeout=None if timeout is None else max(timeout, 0))
        except queue.Empty:
            raise FuturesTimeoutError() from None
        self.outstanding.discard(task)
        return task

    def _wait(self, task: _Task) -> None:
        timeout = self.remaining()
        if timeout is not None and timeout <= 0 and not task.future.done():
            raise FuturesTimeoutError()
        # result() raises the task's exception or TimeoutError for us.
        task.future.result(timeout)

    def unpack(self, task: _Task) -> tuple[list[Any], BaseException | None]:
        """The values of a finished task, and the error that follows them."""
        if not task.chunked:
            # Raises the task's own exception at its position.
            return [task.future.result()], None
        outcome: ChunkResult = task.future.result()
        if self.chunker is not None:
            self.chunker.observe(outcome, len(outcome.values))
        # Items after a failure were never run; they leave the buffer too.
        self.in_buffer -= task.size - len(outcome.values)
        return outcome.values, cast("BaseException | None", outcome.error)

    def close(self) -> None:
        self.cancel_all()
        if self.bar is not None:
            self.bar.close()

    def results(self) -> MapIterator[Any]:
        """The results, one by one (see :class:`MapIterator`)."""
        return MapIterator.start(self.batches())

    def batches(self) -> Generator[Iterator[Any], None, None]:
        """The values of each finished task in turn, then its error if any."""
        try:
            self.fill()
            while self.pending or self.outstanding:
                values, error = self.unpack(self.next_task())
                if values:
                    count = len(values)
                    yield _handing_over(values)
                    # Resumed once the caller has taken every one of them.
                    self.in_buffer -= count
                    del values
                if error is not None:
                    raise error
                self.fill()
        finally:
            self.close()

    async def aresults(self) -> AsyncGenerator[Any, None]:
        """The same results as :meth:`results`, awaited instead of blocked on.

        Cancelling the task that iterates cancels every queued chunk.
        """
        # Imported here: asyncio costs ~50 ms, and only async users need it.
        import asyncio

        loop = asyncio.get_running_loop()
        wakeup = asyncio.Event()
        self.wakeup = lambda: loop.call_soon_threadsafe(wakeup.set)
        try:
            self.fill()
            while self.pending or self.outstanding:
                task = await self._anext_task(wakeup)
                values, error = self.unpack(task)
                for value in _handing_over(values):
                    self.in_buffer -= 1
                    yield value
                    del value
                del values
                if error is not None:
                    raise error
                self.fill()
        finally:
            self.wakeup = None
            self.close()

    async def _anext_task(self, wakeup: asyncio.Event) -> _Task:
        import asyncio

        if self.ordered:
            task = self.pending[0]
            if not task.future.done():
                waiter = asyncio.wrap_future(task.future)
                done, _ = await asyncio.wait({waiter}, timeout=self.remaining())
                if not done:
                    waiter.cancel()
                    raise FuturesTimeoutError()
                if not waiter.cancelled():
                    # Mark it retrieved: unpack() raises it from the source.
                    waiter.exception()
            self.pending.popleft()
            return task
        while True:
            # Clear before looking: a callback that lands in between sets it
            # again, so no completion is missed.
            wakeup.clear()
            try:
                task = self.done.get_nowait()
            except queue.Empty:
                try:
                    await asyncio.wait_for(wakeup.wait(), self.remaining())
                except asyncio.TimeoutError:
                    raise FuturesTimeoutError() from None
                continue
            self.outstanding.discard(task)
            return task


def _known_length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _progress_bar(total: int | None) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:
        from ._errors import BackendNotInstalledError

        raise BackendNotInstalledError(
            'progress=True needs tqdm: pip install "executors[progress]"'
        ) from exc
    return tqdm(total=total, unit="item")


def start_map(
    source: MapSource,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    *,
    ordered: bool,
    timeout: float | None,
    chunksize: int | None,
    buffersize: int | None,
    progress: bool,
    task_options: TaskOptions | None = None,
) -> MapRun:
    """Start a map; iterate ``.results()`` (or ``.aresults()``) for its results.

    Work is submitted here, at the call, not when iteration begins: the
    eager mode submits everything, the lazy mode its first buffer-full.
    Arguments are validated by the caller. With a timeout or retries in
    ``task_options`` every item is a task of its own, so that each item
    gets its own clock and its own attempts.
    """
    if task_options is not None and task_options.is_default:
        task_options = None
    if task_options is not None:
        chunksize = 1
    deadline = None if timeout is None else time.monotonic() + timeout
    star = len(iterables) != 1
    # Not strict: like builtin map, stop at the shortest input.
    args: Iterator[Any] = zip(*iterables, strict=False) if star else iter(iterables[0])
    workers = max(1, source._map_workers())
    if buffersize is None:
        items = list(args)
        bar = _progress_bar(len(items)) if progress else None
        run = MapRun(
            source, fn, iter(()), star, ordered, deadline, None, None, workers, bar
        )
        run.options = task_options
        position = 0
        try:
            for size in plan_chunks(len(items), workers, chunksize):
                chunk = Chunk(items[position : position + size], star)
                position += size
                run.submit(
                    chunk, chunked=size > 1 or (chunksize is not None and chunksize > 1)
                )
        except BaseException:
            run.cancel_all()
            if bar is not None:
                bar.close()
            raise
    else:
        # Adaptive chunks fit the buffer twice per worker, so every worker
        # can have one running and one waiting; a chosen chunksize is kept
        # unless the buffer is smaller.
        cap = buffersize if chunksize else max(1, buffersize // (2 * workers))
        chunker = _AdaptiveChunker(cap=cap, fixed=chunksize)
        bar = _progress_bar(_known_length(iterables)) if progress else None
        run = MapRun(
            source, fn, args, star, ordered, deadline, buffersize, chunker, workers, bar
        )
        run.options = task_options
        run.fill()
    return run
