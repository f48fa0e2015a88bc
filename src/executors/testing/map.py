"""``map`` and ``map_unordered``: results, order, chunks, bounds and timeouts.

The order of results is its own topic in a scorecard (see
:mod:`executors.testing.certify`), but the tests live here, with ``map``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from . import tasks
from ._support import (
    BOUND,
    ContractBase,
)

__all__ = [
    "MapContract",
]


FuturesTimeout = futures.TimeoutError


def _sum_args(*args: int) -> int:
    return sum(args)


class _Counted:
    """0, 1, 2 ... (``count`` of them, or for ever), counting those pulled."""

    def __init__(self, count: int | None = None) -> None:
        self.pulled = 0
        self._count = count

    def __iter__(self) -> Iterator[int]:
        numbers = itertools.count() if self._count is None else range(self._count)
        for i in numbers:
            self.pulled += 1
            yield i


class MapContract(ContractBase):
    """``map`` and ``map_unordered``."""

    @pytest.mark.parametrize("size", [8, 400])
    def test_system_exit_in_an_item_comes_after_the_earlier_values(
        self, executor: Any, size: int
    ) -> None:
        # 8 items run one per task, 400 in chunks: the chunk runner must
        # deliver the values before a SystemExit as for any exception.
        bad = size * 3 // 4
        got: list[int] = []
        with pytest.raises(SystemExit):
            for value in executor.map(
                tasks.system_exit_at, range(size), itertools.repeat(bad), timeout=BOUND
            ):
                got.append(value)
        assert got == list(range(bad))
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3

    def test_map_equals_builtin_map(
        self, executor: Any, hypothesis_examples: int | None
    ) -> None:
        # Given inside the test, so the number of examples can come from a
        # fixture (see ContractBase.hypothesis_examples); the executor is
        # the test's, shared by every example.
        @settings(max_examples=hypothesis_examples or 25, deadline=None)
        @given(
            columns=st.lists(
                st.lists(st.integers(), max_size=40), min_size=1, max_size=3
            ),
            extra=st.integers(min_value=0, max_value=3),
            data=st.data(),
        )
        def check(columns: list[list[int]], extra: int, data: Any) -> None:
            longest = max(len(c) for c in columns)
            chunksize = data.draw(
                st.integers(min_value=1, max_value=longest + extra + 1)
            )
            expected = list(map(_sum_args, *columns))
            got = list(
                executor.map(_sum_args, *columns, chunksize=chunksize, timeout=BOUND)
            )
            assert got == expected
            assert list(executor.map(_sum_args, *columns, timeout=BOUND)) == expected

        check()

    def test_long_map_with_automatic_chunks(self, executor: Any) -> None:
        items = range(5000)
        assert list(executor.map(tasks.identity, items, timeout=BOUND)) == list(items)

    @pytest.mark.parametrize("chunksize", [0, -1])
    def test_chunksize_below_one_raises(self, executor: Any, chunksize: int) -> None:
        with pytest.raises(ValueError, match="chunksize"):
            executor.map(tasks.identity, [1], chunksize=chunksize)

    @pytest.mark.parametrize("buffersize", [0, -3])
    def test_buffersize_below_one_raises(self, executor: Any, buffersize: int) -> None:
        with pytest.raises(ValueError, match="buffersize"):
            executor.map(tasks.identity, [1], buffersize=buffersize)

    def test_negative_timeout_raises(self, executor: Any) -> None:
        with pytest.raises(ValueError, match="timeout"):
            executor.map(tasks.identity, [1], timeout=-1)

    def test_non_callable_raises(self, executor: Any) -> None:
        with pytest.raises(TypeError, match="callable"):
            executor.map(None, [1])

    @pytest.mark.parametrize("chunksize", [None, 1, 3])
    def test_failure_raises_at_its_position(
        self, executor: Any, chunksize: Any
    ) -> None:
        results = executor.map(tasks.fail_on, range(10), [4] * 10, chunksize=chunksize)
        got = []
        with pytest.raises(ValueError, match="item 4 is bad"):
            for value in results:
                got.append(value)
        assert got == [0, 1, 2, 3]

    def test_timeout_counts_from_the_call(self, executor: Any, tmp_path: Path) -> None:
        self.require(executor, "runs_concurrently")
        # Warm up first: the bound is on the map, not on starting workers.
        assert executor.submit(tasks.identity, 0).result(timeout=BOUND) == 0
        # The first item returns at once, the second once released (at the
        # latest in 5 s): released at the end, no worker stays busy with it
        # for teardown to wait on.
        ready, held = tmp_path / "ready", tmp_path / "held"
        ready.touch()
        results = executor.map(
            tasks.wait_for_path,
            [str(ready), str(held)],
            [1, 2],
            [5.0, 5.0],
            timeout=1.5,
        )
        try:
            time.sleep(2.5)
            # The deadline has passed: a finished result is still yielded, an
            # unfinished one raises at once instead of waiting another 1.5 s.
            assert next(results) == 1
            start = time.monotonic()
            with pytest.raises(FuturesTimeout):
                next(results)
            assert time.monotonic() - start < 1.0
        finally:
            held.touch()

    @pytest.mark.parametrize("buffersize", [1, 2, 7])
    def test_buffersize_bounds_items_read_ahead(
        self, executor: Any, buffersize: int
    ) -> None:
        source = _Counted()
        results = executor.map(tasks.identity, iter(source), buffersize=buffersize)
        assert source.pulled <= buffersize
        for yielded, value in enumerate(results, start=1):
            assert value == yielded - 1
            assert source.pulled - yielded <= buffersize
            if yielded == 50:
                break
        results.close()

    def test_unordered_map_yields_every_result(self, executor: Any) -> None:
        got = list(executor.map_unordered(tasks.identity, range(300), timeout=BOUND))
        assert sorted(got) == list(range(300))

    def test_unordered_map_is_bounded(self, executor: Any) -> None:
        source = _Counted()
        results = executor.map_unordered(tasks.identity, iter(source), buffersize=4)
        for yielded, _ in enumerate(results, start=1):
            assert source.pulled - yielded <= 4
            if yielded == 30:
                break
        results.close()

    def test_unordered_map_yields_fast_results_first(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently")
        got = list(
            executor.map_unordered(
                tasks.sleep_and_return, [1.0, 0.0], ["slow", "fast"], timeout=BOUND
            )
        )
        assert got == ["fast", "slow"]

    def test_empty_input(self, executor: Any) -> None:
        assert list(executor.map(tasks.identity, [])) == []
        assert list(executor.map_unordered(tasks.identity, [], buffersize=3)) == []

    def test_lambda_in_map(self, executor: Any) -> None:
        assert list(executor.map(lambda x: x * 2, range(5), timeout=BOUND)) == [
            0,
            2,
            4,
            6,
            8,
        ]

    def test_input_read_eagerly_without_buffersize(self, executor: Any) -> None:
        source = _Counted(20)
        results = executor.map(tasks.identity, iter(source))
        assert source.pulled == 20
        assert list(results) == list(range(20))

    def test_progress_bar_counts_items(
        self, executor: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pytest.importorskip("tqdm")
        got = list(executor.map(tasks.identity, range(40), chunksize=8, progress=True))
        assert got == list(range(40))
        assert "40/40" in capsys.readouterr().err
