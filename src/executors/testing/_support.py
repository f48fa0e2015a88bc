"""Fixtures and helpers shared by the behaviour classes of the suite."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar

import pytest

from . import tasks

__all__ = [
    "BOUND",
    "ContractBase",
    "ExecutorFactory",
    "child_processes",
    "full_traceback",
    "occupy_workers",
    "wait_for_file",
    "wait_for_no_new_children",
]

#: Seconds any single wait in the suite may take. A hung backend fails the
#: test at this bound; pytest-timeout is only the backstop.
BOUND = 15.0

ExecutorFactory = Callable[..., Any]

# Long-lived helpers that multiprocessing starts once per interpreter, not
# per executor; they are not leaks.
_HELPER_MARKERS = ("resource_tracker", "forkserver", "semaphore_tracker")


def child_processes() -> set[int]:
    """PIDs of this process's live descendants, helpers excluded."""
    import psutil

    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(marker in cmdline for marker in _HELPER_MARKERS):
            continue
        pids.add(child.pid)
    return pids


def wait_for_file(path: Path) -> str:
    """Wait (bounded) until a task has written ``path``; return its text."""
    deadline = time.monotonic() + BOUND
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)
    return path.read_text()


def wait_for_no_new_children(
    before: set[int],
    bound: float = BOUND,
    children: Callable[[], set[int]] = child_processes,
) -> set[int]:
    """Wait until no descendant beyond ``before`` is alive; return leftovers.

    ``children`` lists the descendants that count (all but multiprocessing's
    helpers, by default).
    """
    deadline = time.monotonic() + bound
    while True:
        leftover = children() - before
        if not leftover or time.monotonic() > deadline:
            return leftover
        time.sleep(0.05)


class ContractBase:
    """Fixtures every behaviour class shares.

    A backend's test module provides one fixture, ``executor_factory``: a
    callable that takes keyword options (``max_workers``, ``initializer``,
    ``initargs`` ...) and returns a new executor. Everything else derives
    from it.
    """

    #: What ``make_executor`` passes to each executor's ``shutdown(wait=True)``
    #: at teardown; empty for a target whose ``shutdown()`` lacks
    #: ``cancel_futures`` (loky's).
    teardown_shutdown_options: ClassVar[dict[str, Any]] = {"cancel_futures": True}

    @pytest.fixture
    def leak_check_children(self) -> Callable[[], set[int]]:
        """What lists the child processes the teardown leak checks count.

        :func:`child_processes` by default. A project overrides it to leave
        out processes no test owns (workers of a deployment its tests share,
        which may replace a process a test crashed).
        """
        return child_processes

    @pytest.fixture
    def make_executor(
        self,
        executor_factory: ExecutorFactory,
        leak_check_children: Callable[[], set[int]],
    ) -> Iterator[ExecutorFactory]:
        """Create executors; shut each down at teardown and check for leaks.

        Teardown asserts a bounded shutdown and that no child process of the
        executor outlives it.
        """
        before = leak_check_children()
        created: list[Any] = []

        def make(**options: Any) -> Any:
            executor = executor_factory(**options)
            created.append(executor)
            return executor

        yield make
        for executor in created:
            start = time.monotonic()
            executor.shutdown(wait=True, **self.teardown_shutdown_options)
            took = time.monotonic() - start
            assert took < BOUND, f"shutdown took {took:.1f}s"
        leftover = wait_for_no_new_children(before, children=leak_check_children)
        assert not leftover, f"child processes left after shutdown: {sorted(leftover)}"

    @pytest.fixture
    def hypothesis_examples(self) -> int | None:
        """How many examples each hypothesis test draws; None for its own count.

        A project may parametrize it from its ``conftest.py`` (this
        project's runs a few in its quick run and the full count under
        ``-m slow``).
        """
        return None

    @pytest.fixture
    def executor(self, make_executor: ExecutorFactory) -> Any:
        """A fresh executor with the backend's test defaults."""
        return make_executor()

    @staticmethod
    def require(executor: Any, *flags: str, value: bool = True) -> None:
        """Skip the test unless the executor declares ``flags`` == ``value``."""
        caps = executor.capabilities
        for flag in flags:
            if getattr(caps, flag) is not value:
                pytest.skip(f"{executor.backend!r} declares {flag}={not value}")


def full_traceback(exc: BaseException) -> str:
    """The exception's whole traceback text, its causes included."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def occupy_workers(executor: Any, seconds: float) -> list[Future[Any]]:
    """Submit one blocking task per worker, and wait until they run."""
    blockers = [
        executor.submit(tasks.sleep_and_return, seconds, "blocker")
        for _ in range(executor.max_workers)
    ]
    deadline = time.monotonic() + BOUND
    while not all(f.running() or f.done() for f in blockers):
        assert time.monotonic() < deadline, "blocking tasks never started"
        time.sleep(0.01)
    return blockers
