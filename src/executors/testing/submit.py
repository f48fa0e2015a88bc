"""``submit`` and the futures it returns.

The stdlib's ``Future`` with its result, its exception (type, args and the
worker's traceback), cancellation, ``wait``/``as_completed`` and asyncio.
"""

from __future__ import annotations

import asyncio
import time
from concurrent import futures
from concurrent.futures import CancelledError, Future
from typing import Any

import pytest

from .._protocol import Executor
from . import tasks
from ._support import (
    BOUND,
    ContractBase,
    full_traceback,
    occupy_workers,
)

__all__ = [
    "SubmitContract",
]


FuturesTimeout = futures.TimeoutError


class SubmitContract(ContractBase):
    """``submit`` and the futures it returns."""

    def test_is_a_stdlib_executor(self, executor: Any) -> None:
        assert isinstance(executor, futures.Executor)
        assert isinstance(executor, Executor)
        assert isinstance(executor.backend, str)

    def test_returns_a_stdlib_future_with_the_result(self, executor: Any) -> None:
        fut = executor.submit(tasks.add, 2, 3)
        # The stdlib's class, or a subclass that only fixes its flaws.
        assert isinstance(fut, Future)
        assert type(fut).__module__ in {
            "concurrent.futures._base",
            "executors._futures",
        }
        assert fut.result(timeout=BOUND) == 5

    def test_falsy_exception_still_raises(self, executor: Any) -> None:
        # The stdlib's result() tests `if self._exception:` and returns None
        # for an exception whose bool() is false.
        fut = executor.submit(tasks.raise_falsy, "empty")
        with pytest.raises(tasks.FalsyError, match="empty"):
            fut.result(timeout=BOUND)
        assert isinstance(fut.exception(), tasks.FalsyError)

    def test_args_and_kwargs_pass_through(self, executor: Any) -> None:
        fut = executor.submit(tasks.echo, 1, "a", fn="f", self="s", x=None)
        assert fut.result(timeout=BOUND) == (
            (1, "a"),
            {"fn": "f", "self": "s", "x": None},
        )

    def test_exception_keeps_type_args_and_traceback(self, executor: Any) -> None:
        fut = executor.submit(tasks.raise_value_error, "bad value")
        exc = fut.exception(timeout=BOUND)
        assert type(exc) is ValueError
        assert exc.args == ("bad value", 42)
        with pytest.raises(ValueError, match="bad value"):
            fut.result()
        # In-process backends keep the live traceback; process backends chain
        # the worker's formatted traceback as __cause__. Either way the
        # failing function is named.
        assert "raise_value_error" in full_traceback(exc)

    def test_custom_exception_type_and_attributes(self, executor: Any) -> None:
        exc = executor.submit(tasks.raise_custom, 7).exception(timeout=BOUND)
        assert isinstance(exc, tasks.CustomError)
        assert (exc.code, exc.detail) == (7, "custom failure")

    def test_system_exit_in_a_task_is_the_task_error(self, executor: Any) -> None:
        fut = executor.submit(tasks.raise_system_exit, 5)
        with pytest.raises(SystemExit):
            fut.result(timeout=BOUND)
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2

    @pytest.mark.parametrize("fn", [None, 42, "add"])
    def test_non_callable_raises_type_error(self, executor: Any, fn: Any) -> None:
        with pytest.raises(TypeError, match="callable"):
            executor.submit(fn, 1)
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2

    def test_lambda_and_closure_work(self, executor: Any) -> None:
        offset = 10
        assert executor.submit(lambda x: x + offset, 1).result(timeout=BOUND) == 11

    def test_result_timeout_while_unfinished(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently")
        fut = executor.submit(tasks.sleep_and_return, 1.0, "late")
        with pytest.raises(FuturesTimeout):
            fut.result(timeout=0.05)
        assert fut.result(timeout=BOUND) == "late"

    def test_cancel_succeeds_on_a_queued_future(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently", "cancels_queued")
        blockers = occupy_workers(executor, 1.0)
        queued = [executor.submit(tasks.identity, i) for i in range(8)]
        assert queued[-1].cancel()
        assert queued[-1].cancelled()
        with pytest.raises(CancelledError):
            queued[-1].result(timeout=BOUND)
        for f in blockers:
            assert f.result(timeout=BOUND) == "blocker"
        for i, f in enumerate(queued[:-1]):
            if not f.cancelled():
                assert f.result(timeout=BOUND) == i

    def test_cancel_fails_on_a_running_future(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently")
        (blocker, *_) = occupy_workers(executor, 0.5)
        assert not blocker.cancel()
        assert blocker.result(timeout=BOUND) == "blocker"

    def test_done_callbacks_fire(self, executor: Any) -> None:
        seen: list[Any] = []
        fut = executor.submit(tasks.add, 1, 2)
        fut.add_done_callback(lambda f: seen.append(f.result()))
        fut.result(timeout=BOUND)
        deadline = time.monotonic() + BOUND
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [3]

    def test_wait_and_as_completed(self, executor: Any) -> None:
        fs = [executor.submit(tasks.add, i, 1) for i in range(6)]
        done, not_done = futures.wait(fs, timeout=BOUND)
        assert not not_done
        assert sorted(f.result() for f in futures.as_completed(fs, timeout=BOUND)) == [
            1,
            2,
            3,
            4,
            5,
            6,
        ]
        assert len(done) == 6

    def test_asyncio_wrap_future(self, executor: Any) -> None:
        async def main() -> Any:
            return await asyncio.wait_for(
                asyncio.wrap_future(executor.submit(tasks.add, 20, 22)), BOUND
            )

        assert asyncio.run(main()) == 42

    def test_run_in_executor(self, executor: Any) -> None:
        async def main() -> Any:
            loop = asyncio.get_running_loop()
            return await asyncio.wait_for(
                loop.run_in_executor(executor, tasks.add, 1, 2), BOUND
            )

        assert asyncio.run(main()) == 3
