"""``apply``, ``apply_async`` and their callbacks."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import time
from typing import Any

import pytest

from ...pool import Pool
from .. import tasks
from .._support import (
    BOUND,
    full_traceback,
)
from ._base import (
    PoolContractBase,
    square,
)

__all__ = [
    "PoolApplyContract",
]


class PoolApplyContract(PoolContractBase):
    """``apply``, ``apply_async`` and the AsyncResult they return."""

    def test_apply_passes_args_and_kwds(self, shared_pool: Pool) -> None:
        assert shared_pool.apply(square, (5,)) == 25
        assert shared_pool.apply(tasks.add, (), {"a": 3}) == 3
        assert shared_pool.apply(tasks.add, (2,), {"b": 3}) == 5

    def test_async_result_interface(self, shared_pool: Pool) -> None:
        result = shared_pool.apply_async(tasks.sleep_and_return, (0.3, 7))
        if shared_pool.executor.capabilities.runs_concurrently:
            assert not result.ready()
            with pytest.raises(ValueError, match="not ready"):
                result.successful()
            start = time.monotonic()
            with pytest.raises(multiprocessing.TimeoutError):
                result.get(timeout=0.05)
            assert time.monotonic() - start < BOUND / 3
        assert result.get(timeout=BOUND) == 7
        assert result.ready()
        assert result.successful()
        result.wait()  # returns at once once ready

    def test_task_exception_keeps_type_args_and_traceback(
        self, shared_pool: Pool
    ) -> None:
        with pytest.raises(ValueError, match="bad value") as info:
            shared_pool.apply(tasks.raise_value_error, ("bad value",))
        assert info.value.args == ("bad value", 42)
        assert "raise_value_error" in full_traceback(info.value)
        result = shared_pool.apply_async(tasks.raise_custom, (7,))
        result.wait(BOUND)
        assert not result.successful()
        with pytest.raises(tasks.CustomError):
            result.get(timeout=BOUND)

    def test_callback_or_error_callback_runs_before_ready(
        self, shared_pool: Pool
    ) -> None:
        seen: list[Any] = []
        shared_pool.apply_async(
            square, (4,), callback=seen.append, error_callback=seen.append
        ).wait(BOUND)
        assert seen == [16]
        result = shared_pool.apply_async(
            tasks.raise_value_error,
            callback=seen.append,
            error_callback=seen.append,
        )
        with pytest.raises(ValueError):
            result.get(timeout=BOUND)
        assert len(seen) == 2
        assert isinstance(seen[1], ValueError)

    def test_map_async_callbacks(self, shared_pool: Pool) -> None:
        seen: list[Any] = []
        shared_pool.map_async(
            int, ["1"], callback=seen.append, error_callback=seen.append
        ).wait(BOUND)
        assert seen == [[1]]
        shared_pool.map_async(
            int, ["a"], callback=seen.append, error_callback=seen.append
        ).wait(BOUND)
        assert len(seen) == 2
        assert isinstance(seen[1], ValueError)

    def test_a_callback_may_call_the_pool(self, shared_pool: Pool) -> None:
        # The stdlib's result thread waits forever here: the callback runs
        # on it, and so would the completion of the call it waits for.
        seen: list[Any] = []

        def callback(value: int) -> None:
            seen.append(shared_pool.apply(tasks.sleep_and_return, (0.2, value)))
            seen.append(shared_pool.map(square, [value]))

        first = shared_pool.apply_async(square, (3,), callback=callback)
        second = shared_pool.map_async(
            square,
            [2],
            callback=lambda v: seen.append(shared_pool.starmap(tasks.add, [(v[0], 1)])),
        )
        assert first.get(timeout=BOUND) == 9
        assert second.get(timeout=BOUND) == [4]
        assert sorted(seen, key=repr) == sorted([9, [81], [5]], key=repr)

    def test_a_failing_callback_is_logged_and_get_still_returns(
        self, shared_pool: Pool, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken_callback(_: object) -> None:
            raise RuntimeError("the callback failed")

        result = shared_pool.apply_async(square, (3,), callback=broken_callback)
        assert result.get(timeout=BOUND) == 9
        assert "the callback failed" in caplog.text
