"""Chunk sizes for ``map``: the eager plan and the lazy, adaptive one.

See :mod:`executors._map` for when each applies.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

from ._chunks import ChunkResult

__all__ = [
    "CHUNKS_IN_FLIGHT_PER_WORKER",
    "MAX_CHUNK",
    "PER_ITEM_ITEMS_PER_WORKER",
    "AdaptiveChunker",
    "plan_chunks",
]

# Inputs up to this many items per worker run one item per task: the
# overhead is small in absolute terms and per-item timeouts, ordering and
# cancellation then behave exactly as with chunksize=1.
PER_ITEM_ITEMS_PER_WORKER = 16
# Guided chunking hands out 1/(CHUNKS_PER_WORKER * workers) of what remains
# per chunk: larger means smaller chunks (better balance, more overhead).
CHUNKS_PER_WORKER = 2
# Guided chunks never shrink below 1/FLOOR_DIVISOR of the first one. With 2,
# the floor is multiprocessing.Pool.map's fixed chunk, n/(4*workers): the
# tail is as fine as Pool.map's, and the larger first chunks make fewer
# chunks in all. Each chunk costs a round trip that no-op items do not
# hide, so a lower floor makes maps of cheap items slower than Pool.map.
FLOOR_DIVISOR = 2
# Upper bound on one chunk: keeps a single result message bounded. As large
# as Pool.map's chunks for a few hundred thousand items on 2 workers.
MAX_CHUNK = 32768
# Lazy maps keep at most this many chunks per worker submitted and not yet
# consumed: enough to keep every worker busy while the consumer catches up,
# few enough that the first chunks (one item each, before any timing) do
# not fill a large buffer.
CHUNKS_IN_FLIGHT_PER_WORKER = 4
# Lazy maps grow chunks until one takes about this long in the worker:
# well above every backend's per-task overhead (Dask's is ~2 ms), short
# enough that timeouts and cancellation stay responsive.
TARGET_CHUNK_SECONDS = 0.02


def plan_chunks(n: int, workers: int, chunksize: int | None) -> Iterator[int]:
    """Yield the chunk sizes of an eager map over ``n`` items.

    Args:
        n: Number of items.
        workers: Number of workers sharing them.
        chunksize: A fixed size, or ``None`` for the automatic plan.
    """
    if chunksize is not None:
        for start in range(0, n, chunksize):
            yield min(chunksize, n - start)
        return
    if n <= PER_ITEM_ITEMS_PER_WORKER * workers:
        yield from itertools.repeat(1, n)
        return
    remaining = n
    share = CHUNKS_PER_WORKER * workers
    # Guided chunks stop shrinking at the floor: below it, more chunks cost
    # more in messages than they gain in balance.
    floor = math.ceil(n / (FLOOR_DIVISOR * share))
    while remaining:
        size = min(MAX_CHUNK, remaining, max(floor, math.ceil(remaining / share)))
        yield size
        remaining -= size


@dataclass
class AdaptiveChunker:
    """Chunk sizes for lazy maps, from the worker times seen so far."""

    cap: int
    fixed: int | None
    size: int = 1
    per_item: float | None = None

    def next_size(self) -> int:
        return min(self.fixed if self.fixed is not None else self.size, self.cap)

    def observe(self, result: ChunkResult, count: int) -> None:
        if self.fixed is not None or count == 0:
            return
        sample = result.elapsed / count
        self.per_item = (
            sample if self.per_item is None else (self.per_item + sample) / 2
        )
        wanted = TARGET_CHUNK_SECONDS / max(self.per_item, 1e-9)
        # At most double per step: one fast outlier must not make a huge chunk.
        self.size = max(1, min(self.size * 2, int(wanted), MAX_CHUNK))
