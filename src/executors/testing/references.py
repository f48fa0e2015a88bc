"""The executor keeps nothing alive that the caller has let go of."""

from __future__ import annotations

import time
from typing import Any

import pytest

from . import tasks
from ._support import (
    BOUND,
    ContractBase,
)

__all__ = [
    "ReferenceContract",
]


def _collected(ref: Any, seconds: float = BOUND) -> bool:
    import gc

    if ref() is None:
        # Freed by its reference count: no full collection needed (one
        # costs tens of milliseconds in a test process).
        return True
    deadline = time.monotonic() + seconds
    while True:
        gc.collect()
        if ref() is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


class ReferenceContract(ContractBase):
    """The executor keeps nothing alive that the caller has let go of."""

    def test_no_reference_to_a_finished_task_callable(self, executor: Any) -> None:
        import weakref

        holder = tasks.Holder("value", size=1 << 20)
        ref = weakref.ref(holder)
        fut = executor.submit(holder.get)
        assert fut.result(timeout=BOUND) == "value"
        del holder
        # The future is still held: it must not hold the callable either.
        assert _collected(ref), "the executor kept the task's callable alive"
        del fut

    def test_no_reference_to_a_finished_task_argument(self, executor: Any) -> None:
        import weakref

        holder = tasks.Holder("value")
        ref = weakref.ref(holder)
        fut = executor.submit(tasks.identity, holder)
        assert fut.result(timeout=BOUND).value == "value"
        del holder
        if not executor.capabilities.process_isolation:
            fut = None  # in-process, the result *is* the argument
        assert _collected(ref), "the executor kept the task's argument alive"

    @pytest.mark.parametrize("size", [10, 400])
    def test_map_keeps_no_yielded_result(self, executor: Any, size: int) -> None:
        import weakref

        results = executor.map(tasks.make_holder, range(size), timeout=BOUND)
        # No enumerate(): it keeps its last (index, value) tuple for reuse.
        index = -1
        for value in results:
            index += 1
            assert value.value == index
            if index in (0, size // 2):
                ref = weakref.ref(value)
                del value
                assert _collected(ref, 5.0), (
                    f"map kept result {index} alive after yielding it"
                )

    # Each way a map runs its items: one task per item (a short input with
    # the default chunksize, and always with timeout=), fixed chunks, guided
    # chunks (a longer input), lazy reading, and completion order.
    _MAP_PATHS: dict[str, tuple[dict[str, Any], int | None]] = {
        "default": ({}, 8),
        "timeout": ({"timeout": 4 * BOUND}, 8),
        "chunksize": ({"chunksize": 4}, 8),
        "guided_chunks": ({}, None),
        "buffersize": ({"buffersize": 2}, 8),
        "unordered": ({"unordered": True}, 8),
    }

    @pytest.mark.parametrize("path", list(_MAP_PATHS))
    def test_map_frees_every_result_as_it_is_yielded(
        self, executor: Any, path: str
    ) -> None:
        # CPython's test_free_reference, on every map path: each value,
        # the last one included, is freed once the caller drops it, while
        # the map is still open.
        import weakref

        from .. import _map

        options, size = self._MAP_PATHS[path]
        options = dict(options)
        if size is None:  # past one task per item: guided chunks
            size = (_map.PER_ITEM_ITEMS_PER_WORKER + 4) * executor.max_workers
        unordered = options.pop("unordered", False)
        run = executor.map_unordered if unordered else executor.map
        results = run(tasks.make_holder, range(size), **options)
        seen: set[int] = set()
        for value in results:
            seen.add(value.value)
            ref = weakref.ref(value)
            del value
            assert _collected(ref, 5.0), (
                f"map ({path}) kept a result alive after yielding it "
                f"({len(seen)} of {size} yielded)"
            )
        assert seen == set(range(size))
