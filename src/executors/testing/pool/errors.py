"""Errors a ``Pool`` program sees: dead workers, and the stdlib's own classes."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from concurrent.futures.process import _RemoteTraceback as FuturesRemoteTraceback

import pytest

from ...pool import Pool
from .. import tasks
from .._support import (
    BOUND,
    full_traceback,
)
from ._base import (
    MaybeEncodingError,
    PoolContractBase,
    PoolRemoteTraceback,
    square,
)

__all__ = [
    "PoolCrashContract",
    "PoolStdlibErrorsContract",
]


class PoolCrashContract(PoolContractBase):
    """A dead worker fails its task: nothing hangs (process backends)."""

    @pytest.fixture(autouse=True)
    def _only_process_backends(self, pool: Pool) -> None:
        self.require_pool(pool, "process_isolation")
        # A backend that retries a lost task kills worker after worker
        # before it gives up: slow, and covered by the fault suite.
        self.require_pool(pool, "retries_lost_tasks", value=False)

    def test_apply_async_of_a_dying_task_fails(self, pool: Pool) -> None:
        result = pool.apply_async(tasks.exit_abruptly, (3,))
        with pytest.raises(BrokenExecutor):
            result.get(timeout=BOUND)

    def test_map_with_a_dying_worker_raises_instead_of_hanging(
        self, pool: Pool
    ) -> None:
        # CPython gh-66587 / gh-96062: Pool.map waits forever here.
        start = time.monotonic()
        with pytest.raises(BrokenExecutor):
            pool.map(tasks.exit_abruptly, [3, 3])
        assert time.monotonic() - start < BOUND
        if pool.executor.capabilities.survives_worker_death:
            assert pool.map(square, range(4)) == [0, 1, 4, 9]

    def test_imap_with_a_dying_worker_raises(self, pool: Pool) -> None:
        it = pool.imap(tasks.exit_abruptly, [3])
        with pytest.raises(BrokenExecutor):
            it.next(timeout=BOUND)


class PoolStdlibErrorsContract(PoolContractBase):
    """Errors as ``multiprocessing.Pool`` raises them (process backends).

    What CPython's own Pool and ``concurrent.futures`` tests look for: a
    result the worker cannot pickle is ``MaybeEncodingError``, and the
    worker's traceback is the stdlib's remote-traceback class.
    """

    @pytest.fixture(autouse=True)
    def _only_process_backends(self, shared_pool: Pool) -> None:
        self.require_pool(shared_pool, "process_isolation")

    def test_an_unpicklable_result_is_maybe_encoding_error(
        self, shared_pool: Pool
    ) -> None:
        # CPython's test_unpickleable_result, with its error_callback; twice,
        # so a lost worker would show.
        for _ in range(2):
            seen: list[BaseException] = []
            result = shared_pool.apply_async(
                tasks.return_unpicklable, error_callback=seen.append
            )
            with pytest.raises(MaybeEncodingError) as info:
                result.get(timeout=BOUND)
            assert seen == [info.value]
            error = info.value
            assert error.exc == "TypeError('UnpicklableArg refuses to be pickled')"
            assert error.value.startswith("<executors.testing.tasks.UnpicklableArg")
            assert str(error) == (
                f"Error sending result: '{error.value}'. Reason: '{error.exc}'"
            )
            # The pickler's own error, with the worker's traceback, behind it.
            assert isinstance(error.__cause__, TypeError)
            assert "return_unpicklable" not in str(error)
            copy = pickle.loads(pickle.dumps(error))
            assert (copy.exc, copy.value) == (error.exc, error.value)
        calls: list[Callable[[], object]] = [
            lambda: shared_pool.map(tasks.return_unpicklable, range(3)),
            lambda: shared_pool.map(tasks.return_unpicklable, range(40), 8),
            lambda: shared_pool.map_async(tasks.return_unpicklable, [1]).get(BOUND),
            lambda: list(shared_pool.imap(tasks.return_unpicklable, range(3))),
            lambda: list(shared_pool.imap_unordered(tasks.return_unpicklable, [1])),
        ]
        for call in calls:
            with pytest.raises(MaybeEncodingError) as info:
                call()
            assert "UnpicklableArg refuses to be pickled" in info.value.exc
        assert shared_pool.map(square, range(4)) == [0, 1, 4, 9]

    def test_a_task_error_is_not_an_encoding_error(self, shared_pool: Pool) -> None:
        # The same exception type raised by the task itself stays as it is.
        with pytest.raises(TypeError) as info:
            shared_pool.apply(tasks.add, ("a", 1))
        assert not isinstance(info.value, MaybeEncodingError)

    def test_the_remote_traceback_is_the_stdlib_class(self, shared_pool: Pool) -> None:
        errors: list[BaseException] = []
        with pytest.raises(ValueError) as info:
            shared_pool.apply(tasks.raise_value_error, ("bad value",))
        errors.append(info.value)
        with pytest.raises(ValueError) as info:
            shared_pool.starmap(tasks.fail_on, [(i, 3) for i in range(10)], 5)
        errors.append(info.value)
        # The executor's futures, as CPython's test_concurrent_futures sees.
        future = shared_pool.executor.submit(tasks.raise_value_error, "bad value")
        error = future.exception(timeout=BOUND)
        assert error is not None
        errors.append(error)
        for error in errors:
            cause = error.__cause__
            assert isinstance(cause, PoolRemoteTraceback)
            assert isinstance(cause, FuturesRemoteTraceback)
            assert str(cause) == cause.tb
            assert "Traceback (most recent call last)" in cause.tb
            copy = pickle.loads(pickle.dumps(cause))
            assert type(copy) is type(cause)
            assert str(copy) == str(cause)
            text = full_traceback(error)
            assert "The above exception was the direct cause" in text
            assert ("raise_value_error" in text) or ("fail_on" in text)
        # The failing source line itself, as CPython's test_traceback checks.
        assert "raise ValueError(message, 42)" in str(errors[0].__cause__)
