"""``initializer`` / ``initargs``, and initializers that fail.

An initializer that raises, exits or segfaults breaks the executor: every
future fails with a ``BrokenExecutor`` and nothing respawns workers forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future
from typing import Any

import pytest

from . import tasks
from ._faults import (
    FaultBase,
    settle,
)
from ._support import (
    BOUND,
    ContractBase,
    ExecutorFactory,
)

__all__ = [
    "InitializerContract",
    "InitializerFaultContract",
]


class InitializerContract(ContractBase):
    """``initializer`` / ``initargs``."""

    def test_initializer_runs_in_every_worker(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(initializer=tasks.record_init, initargs=("ready",))
        fs = [executor.submit(tasks.sleep_and_return, 0.05, None) for _ in range(6)]
        fs += [executor.submit(tasks.read_init) for _ in range(20)]
        results = [f.result(timeout=BOUND) for f in fs[6:]]
        assert results == ["ready"] * 20

    def test_failing_initializer_breaks_the_executor(
        self, make_executor: ExecutorFactory
    ) -> None:
        from .._errors import InitializerFailedError

        executor = make_executor(initializer=tasks.failing_init)
        with pytest.raises(BrokenExecutor) as caught:
            executor.submit(tasks.identity, 1).result(timeout=BOUND)
        with pytest.raises(BrokenExecutor):
            executor.submit(tasks.identity, 2).result(timeout=BOUND)
        if isinstance(caught.value, InitializerFailedError):
            # One wording on every backend: which executor, and what it was.
            message = str(caught.value)
            assert message.startswith(
                f"the initializer of the {executor.backend!r} executor raised"
            ), message
            assert message.endswith("; the executor is broken"), message


INITIALIZERS: dict[str, Callable[[], None]] = {
    "raises": tasks.failing_init,
    "exits": tasks.exiting_init,
    "segfaults": tasks.segfaulting_init,
}


class InitializerFaultContract(FaultBase):
    """An initializer that raises or kills its worker breaks the executor."""

    @pytest.mark.parametrize("kind", list(INITIALIZERS))
    def test_initializer_fails(
        self,
        make_executor: ExecutorFactory,
        kind: str,
        observe: Callable[[str], None],
    ) -> None:
        if kind != "raises":
            # Read the capabilities before creating: an in-process backend
            # would run this initializer in the test process itself.
            self.require(make_executor(), "process_isolation")
        executor = make_executor(initializer=INITIALIZERS[kind])
        names: set[str] = set()
        refused = 0
        futs: list[Future[Any]] = []
        for i in range(4):
            try:
                futs.append(executor.submit(tasks.identity, i))
            except BrokenExecutor as broken:
                names.add(type(broken).__name__)
                refused += 1
        settle(futs)
        for fut in futs:
            exc = fut.exception()
            assert isinstance(exc, BrokenExecutor), (
                f"a task of an executor whose initializer {kind} gave "
                f"{'its result' if exc is None else repr(exc)}"
            )
        with pytest.raises(BrokenExecutor):
            executor.submit(tasks.identity, 9).result(timeout=BOUND)
        start = time.monotonic()
        executor.shutdown(wait=True)
        took = time.monotonic() - start
        assert took < BOUND, f"shutdown took {took:.1f}s"
        names.update(type(f.exception()).__name__ for f in futs)
        observe(
            f"{'/'.join(sorted(names))}; {len(futs)} futures failed, "
            f"{refused} submits refused"
        )
