"""A chunk of a ``map`` on its way to a worker, and what comes back.

The worker's half of :mod:`executors._map`: a worker that runs a chunk
unpickles :class:`Chunk` and :func:`run_chunk` from here, and so imports
none of the caller's machinery (the map's scheduling, the call queue, the
timer).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ._remote import picklable_exception
from ._serialize import unwrap

if TYPE_CHECKING:
    from ._remote import ExceptionWithTraceback

__all__ = ["Chunk", "ChunkResult", "run_chunk"]


class Chunk:
    """The items of one chunk of a ``map``, as they travel to a worker.

    A map over one iterable keeps its items bare; over several, each item is
    the tuple of arguments ``zip`` made. Bare items skip building a tuple
    per item in the caller, pickling it and unpacking it in the worker:
    together, most of the per-item cost of a map of cheap tasks.

    Args:
        items: The items, in order.
        star: Each item is a tuple of arguments (several iterables).
    """

    __slots__ = ("items", "star")

    def __init__(self, items: list[Any], star: bool) -> None:
        self.items = items
        self.star = star

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: slice) -> Chunk:
        return Chunk(self.items[index], self.star)

    def args(self, index: int) -> tuple[Any, ...]:
        """The argument tuple of item ``index``."""
        item = self.items[index]
        return cast("tuple[Any, ...]", item) if self.star else (item,)

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """The argument tuples of every item, in order."""
        return iter(self.items) if self.star else zip(self.items, strict=True)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return Chunk, (self.items, self.star)

    def __repr__(self) -> str:
        return f"Chunk({len(self.items)} items, star={self.star})"


@dataclass
class ChunkResult:
    """The outcome of :func:`run_chunk`: values up to the first failure.

    Attributes:
        values: The results of the items that succeeded, in order.
        error: The exception of the item after the last value, if any.
        elapsed: Seconds the worker spent on the chunk.
    """

    values: list[Any]
    error: BaseException | ExceptionWithTraceback | None = None
    elapsed: float = 0.0

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Only reached when the chunk crosses a process boundary: attach the
        # worker's traceback there, keep the live exception in-process.
        error = self.error
        if isinstance(error, BaseException):
            error = picklable_exception(error)
        return ChunkResult, (self.values, error, self.elapsed)


def run_chunk(fn: Callable[..., Any], chunk: Chunk) -> ChunkResult:
    """Apply ``fn`` to each item of ``chunk``, stopping at a failure.

    Runs in the worker. Stopping at the first failure is what ``map`` needs:
    it yields the earlier results, then raises, and reads no further.
    """
    start = time.perf_counter()
    # One call layer less per item: the wrapper only matters for pickling.
    fn = unwrap(fn)
    values: list[Any] = []
    error: BaseException | None = None
    # extend() over map(): no bytecode per item, and a value is appended
    # only once its call returned, so the values before a failure are kept
    # (list.extend keeps what it appended when the iterator raises).
    try:
        values.extend((itertools.starmap if chunk.star else map)(fn, chunk.items))
    except KeyboardInterrupt:
        # Ctrl-C belongs to whoever runs the chunk: the caller itself on
        # inline, which must stop the whole map rather than go on.
        raise
    except BaseException as exc:
        # SystemExit too: it is this item's error, and the values before it
        # are delivered first, as for any other exception.
        error = exc
    return ChunkResult(values, error, time.perf_counter() - start)
