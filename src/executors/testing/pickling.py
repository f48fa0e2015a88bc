"""Arguments and results that fail to (un)pickle, harmlessly or fatally.

A failure that kills no worker fails its own future with the pickling error
and nothing else; one that kills a worker is a worker death. Where the
contract allows two outcomes, the test accepts the documented set
(:data:`executors.testing.ACCEPTED`) and records which one the backend chose.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future
from typing import Any

import pytest

from . import tasks
from ._faults import (
    ACCEPTED,
    OTHERS,
    FaultBase,
    after_maybe_broken,
    after_worker_death,
    check_after,
    check_others,
    check_worker_death,
    error_of,
    started,
)

__all__ = [
    "PicklingFaultContract",
]


def _unpicklable_argument(kind: str) -> Any:
    return tasks.UnpicklableArg() if kind == "raising-reduce" else threading.Lock()


def _check_error_or_broken(
    executor: Any,
    exc: BaseException | None,
    others: list[tuple[Future[Any], Any]],
    case: str,
    named: str,
) -> str:
    """``exc`` is one of ``ACCEPTED[case]``: the call's own error, which
    names ``named``, or a broken executor (the worker died); the other tasks
    and the executor after it are as that allows. What to observe."""
    assert isinstance(exc, ACCEPTED[case]), f"{case}: gave {exc!r}"
    died = isinstance(exc, BrokenExecutor)
    if not died:  # BrokenExecutor is a RuntimeError subclass: checked first
        assert named in str(exc)
    summary = check_others(executor, others, worker_died=died)
    after = after_maybe_broken(executor, exc)
    return f"{type(exc).__name__}; others: {summary}; then {after}"


class PicklingFaultContract(FaultBase):
    """Arguments and results that fail to (un)pickle, harmlessly or fatally."""

    @pytest.fixture(autouse=True)
    def _needs_pickling(self, executor: Any) -> None:
        self.require(executor, "process_isolation")

    def _surround(
        self, executor: Any, fn: Callable[..., Any], *args: Any
    ) -> tuple[Future[Any] | BaseException, list[tuple[Future[Any], Any]]]:
        """Submit ``fn(*args)`` between other tasks; submit() may raise."""
        started(executor)
        others = [
            (executor.submit(tasks.sleep_and_return, 0.05, i), i) for i in range(OTHERS)
        ]
        try:
            fut: Future[Any] | BaseException = executor.submit(fn, *args)
        except Exception as exc:
            fut = exc
        others += [(executor.submit(tasks.identity, i), i) for i in range(OTHERS)]
        return fut, others

    @pytest.mark.parametrize("kind", ["raising-reduce", "lock"])
    def test_argument_fails_to_pickle(
        self, executor: Any, kind: str, observe: Callable[[str], None]
    ) -> None:
        fut, others = self._surround(
            executor, tasks.identity, _unpicklable_argument(kind)
        )
        where = "submit()" if isinstance(fut, BaseException) else "future"
        exc = fut if isinstance(fut, BaseException) else error_of(fut)
        assert isinstance(exc, ACCEPTED["argument fails to pickle"]), (
            f"an unpicklable argument gave {exc!r}"
        )
        summary = check_others(executor, others, worker_died=False)
        after = check_after(executor, broken_required=False)
        observe(f"{type(exc).__name__} from {where}; others: {summary}; then {after}")

    @pytest.mark.parametrize("kind", ["raises", "exits", "segfaults"])
    def test_argument_breaks_while_unpickled_in_worker(
        self, executor: Any, kind: str, observe: Callable[[str], None]
    ) -> None:
        arg = {
            "raises": tasks.FailsToUnpickle(),
            "exits": tasks.ExitsOnUnpickle(),
            "segfaults": tasks.SegfaultsOnUnpickle(),
        }[kind]
        fut, others = self._surround(executor, tasks.identity, arg)
        assert isinstance(fut, Future), f"submit() raised {fut!r}"
        exc = error_of(fut)
        if kind == "raises":
            observe(
                _check_error_or_broken(
                    executor,
                    exc,
                    others,
                    "argument raises while unpickled",
                    "FailsToUnpickle",
                )
            )
            return
        assert isinstance(exc, ACCEPTED["worker death"]), (
            f"an argument that kills the worker while unpickled gave {exc!r}"
        )
        summary = check_others(executor, others, worker_died=True)
        after = after_worker_death(executor)
        observe(f"{type(exc).__name__}; others: {summary}; then {after}")

    @pytest.mark.parametrize("kind", ["lock", "raising-reduce"])
    def test_result_fails_to_pickle(
        self, executor: Any, kind: str, observe: Callable[[str], None]
    ) -> None:
        fn = tasks.return_lock if kind == "lock" else tasks.return_raises_on_pickle
        case = (
            "result fails to pickle"
            if kind == "lock"
            else ("result raises while pickled")
        )
        fut, others = self._surround(executor, fn)
        assert isinstance(fut, Future), f"submit() raised {fut!r}"
        exc = error_of(fut)
        assert isinstance(exc, ACCEPTED[case]), f"{case}: gave {exc!r}"
        summary = check_others(executor, others, worker_died=False)
        after = check_after(executor, broken_required=False)
        observe(f"{type(exc).__name__}; others: {summary}; then {after}")

    @pytest.mark.parametrize("kind", ["exits", "segfaults"])
    def test_result_kills_worker_while_pickled(
        self, executor: Any, kind: str, observe: Callable[[str], None]
    ) -> None:
        fn = (
            tasks.return_exits_on_pickle
            if kind == "exits"
            else tasks.return_segfaults_on_pickle
        )
        fut, others = self._surround(executor, fn)
        assert isinstance(fut, Future), f"submit() raised {fut!r}"
        what = "a result that kills the worker while pickled"
        observe(check_worker_death(executor, fut, others, what))

    def test_result_fails_to_unpickle_in_caller(
        self, executor: Any, observe: Callable[[str], None]
    ) -> None:
        fut, others = self._surround(executor, tasks.return_unloadable)
        assert isinstance(fut, Future), f"submit() raised {fut!r}"
        observe(
            _check_error_or_broken(
                executor,
                error_of(fut),
                others,
                "result fails to unpickle",
                "cannot be unpickled",
            )
        )
