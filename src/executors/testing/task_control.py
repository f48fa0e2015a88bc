"""Timeouts, retries and stopping work (``capabilities.task_control``)."""

from __future__ import annotations

import asyncio
import time
from concurrent import futures
from concurrent.futures import BrokenExecutor, Future
from pathlib import Path
from typing import Any

import pytest

from .._parentwatch import process_alive
from . import tasks
from ._support import (
    BOUND,
    ContractBase,
    occupy_workers,
)

__all__ = [
    "TaskControlContract",
]


class TaskControlContract(ContractBase):
    """Timeouts, retries and stopping work (``capabilities.task_control``)."""

    @pytest.fixture(autouse=True)
    def _only_with_task_control(self, executor: Any) -> None:
        self.require(executor, "task_control")

    # -- stopping everything -------------------------------------------------

    @pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
    def test_stopping_the_workers_resolves_every_future(
        self, executor: Any, how: str
    ) -> None:
        self.require(executor, "runs_concurrently")
        finished = executor.submit(tasks.add, 1, 1)
        assert finished.result(timeout=BOUND) == 2
        # Threads cannot be stopped: keep what they abandon short.
        seconds = 30.0 if executor.capabilities.terminates_workers else 1.0
        running = occupy_workers(executor, seconds)
        queued = [executor.submit(tasks.sleep_and_return, seconds, i) for i in range(4)]
        start = time.monotonic()
        getattr(executor, how)()
        assert time.monotonic() - start < BOUND / 2, f"{how}() was not bounded"
        _, pending = futures.wait([*running, *queued], timeout=BOUND / 2)
        assert not pending, f"{len(pending)} futures left pending after {how}()"
        assert finished.result() == 2
        for fut in running:
            if executor.capabilities.terminates_workers or not fut.cancelled():
                with pytest.raises(BrokenExecutor):
                    fut.result()
        for fut in queued:
            # Queued work is cancelled; a call already handed to the library
            # (a window ahead of the workers) fails instead.
            if not fut.cancelled():
                with pytest.raises(BrokenExecutor):
                    fut.result()
        with pytest.raises(RuntimeError):
            executor.submit(tasks.add, 1, 1)

    def test_terminate_workers_ends_workers_that_ignore_sigterm(
        self, executor: Any, tmp_path: Path
    ) -> None:
        # A task may install its own SIGTERM handler (or ignore it), and a
        # worker may have it blocked: terminate_workers() must still end.
        self.require(executor, "runs_concurrently", "terminates_workers")
        blockers = [
            executor.submit(tasks.ignore_sigterm_then_sleep, str(tmp_path), 60.0)
            for _ in range(executor.max_workers)
        ]
        deadline = time.monotonic() + BOUND
        while len(list(tmp_path.iterdir())) < executor.max_workers:
            assert time.monotonic() < deadline, "the blocking tasks never started"
            time.sleep(0.01)
        start = time.monotonic()
        executor.terminate_workers()
        took = time.monotonic() - start
        assert took < BOUND / 2, f"terminate_workers() took {took:.1f}s"
        _, pending = futures.wait(blockers, timeout=BOUND / 2)
        assert not pending, f"{len(pending)} futures left pending"
        for fut in blockers:
            with pytest.raises(BrokenExecutor):
                fut.result()
        # And the tasks are gone, not left running in workers that others
        # (a shared Celery deployment's next tasks) wait for.
        pids = [int(path.name) for path in tmp_path.iterdir()]
        deadline = time.monotonic() + BOUND / 2
        while any(process_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "a task that ignored SIGTERM runs on"
            time.sleep(0.05)

    # -- timeouts ------------------------------------------------------------

    def test_a_task_past_its_timeout_fails_and_the_executor_lives_on(
        self, executor: Any, tmp_path: Path
    ) -> None:
        self.require(executor, "runs_concurrently")
        from .._control import with_options
        from .._errors import TaskTimeoutError

        # Runs 5 s unless released: a backend that cannot stop it (threads)
        # would keep a worker busy that long, and teardown would wait for it.
        release = tmp_path / "release"
        slow = executor.submit(
            with_options(tasks.wait_for_path, timeout=0.5), str(release), "late", 5.0
        )
        try:
            start = time.monotonic()
            with pytest.raises(TaskTimeoutError, match="0.5 s") as caught:
                slow.result(timeout=BOUND)
            assert time.monotonic() - start < 4.0
        finally:
            release.touch()
        assert caught.value.timeout == 0.5
        stopped = executor.capabilities.stops_timed_out_tasks
        assert ("stopped" in str(caught.value)) == stopped
        assert executor.submit(tasks.add, 2, 3).result(timeout=BOUND) == 5

    def test_the_clock_starts_when_the_task_starts(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently")
        from .._control import with_options

        # Queued behind busy workers for longer than the limit, each task
        # still gets its full limit once it runs.
        blockers = occupy_workers(executor, 2.5)
        quick = with_options(tasks.sleep_and_return, timeout=2.0)
        later = [executor.submit(quick, 0.05, i) for i in range(2)]
        for f in blockers:
            assert f.result(timeout=BOUND) == "blocker"
        assert [f.result(timeout=BOUND) for f in later] == [0, 1]

    def test_map_applies_the_timeout_to_each_item(
        self, executor: Any, tmp_path: Path
    ) -> None:
        self.require(executor, "runs_concurrently")
        from .._control import with_options
        from .._errors import TaskTimeoutError

        # Generous for the quick items: a loaded machine is slow to start
        # a task, and only the third item, which runs 8 s unless released,
        # may time out. Released at the end: a backend that cannot stop it
        # (threads) would keep a worker busy that long for teardown.
        ready, held = tmp_path / "ready", tmp_path / "held"
        ready.touch()
        paths = [str(ready), str(ready), str(held), str(ready)]
        fn = with_options(tasks.wait_for_path, timeout=2.0)
        got: list[Any] = []
        try:
            with pytest.raises(TaskTimeoutError):
                for value in executor.map(fn, paths, range(4), [8.0] * 4):
                    got.append(value)
        finally:
            held.touch()
        assert got == [0, 1]

    # -- retries ---------------------------------------------------------------

    def test_a_listed_exception_is_retried(self, executor: Any, tmp_path: Any) -> None:
        from .._control import with_options

        fn = with_options(tasks.fail_first, retries=1, retry_on=tasks.Flaky)
        assert (
            executor.submit(fn, str(tmp_path / "once"), "ok").result(timeout=BOUND)
            == "ok"
        )

    def test_an_unlisted_exception_is_not_retried(
        self, executor: Any, tmp_path: Any
    ) -> None:
        from .._control import with_options

        fn = with_options(tasks.fail_first, retries=3, retry_on=KeyError)
        with pytest.raises(tasks.Flaky):
            executor.submit(fn, str(tmp_path / "once"), "ok").result(timeout=BOUND)

    def test_a_task_that_always_fails_reports_its_attempts(
        self, executor: Any, tmp_path: Any
    ) -> None:
        from .._control import with_options

        log = tmp_path / "attempts"
        fn = with_options(
            tasks.count_and_fail, retries=2, retry_on=tasks.Flaky, retry_delay=0.05
        )
        with pytest.raises(tasks.Flaky) as caught:
            executor.submit(fn, str(log)).result(timeout=BOUND)
        assert log.read_text().count("attempt") == 3
        assert getattr(caught.value, "attempts", None) == 3

    def test_a_dead_worker_is_retried_where_the_backend_survives_it(
        self, executor: Any, tmp_path: Any
    ) -> None:
        self.require(executor, "process_isolation", "survives_worker_death")
        from .._control import with_options

        fn = with_options(tasks.die_first, retries=1)
        assert (
            executor.submit(fn, str(tmp_path / "once"), "ok").result(timeout=BOUND)
            == "ok"
        )

    def test_map_retries_each_item(self, executor: Any, tmp_path: Any) -> None:
        from .._control import with_options

        fn = with_options(tasks.fail_first, retries=1, retry_on=tasks.Flaky)
        paths = [str(tmp_path / f"item{i}") for i in range(6)]
        assert list(executor.map(fn, paths, range(6), timeout=BOUND)) == list(range(6))

    # -- kill_task, asyncio --------------------------------------------------------

    def test_kill_task_stops_one_running_task(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently")
        from .._errors import TaskKilledError

        caps = executor.capabilities
        seconds = 30.0 if caps.kills_single_task or caps.terminates_workers else 1.0
        target, *_ = occupy_workers(executor, seconds)
        killed = executor.kill_task(target)
        assert killed == executor.capabilities.kills_single_task
        if killed:
            with pytest.raises(TaskKilledError):
                target.result(timeout=BOUND)
            assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3
        executor.kill_workers()  # the other blockers: do not wait at teardown

    def test_asyncio_cancellation_cancels_queued_work(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently", "cancels_queued")
        from .. import aio

        blockers = occupy_workers(executor, 1.0)
        # Enough work ahead that the awaited call waits in the executor's
        # queue, whatever window a backend hands to its library.
        fillers = [executor.submit(tasks.sleep_and_return, 0.1, i) for i in range(16)]
        queued: list[Future[Any]] = []

        async def main() -> None:
            task = asyncio.ensure_future(
                aio.submit(executor, tasks.sleep_and_return, 0.1, "queued")
            )
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        original = executor.submit

        def spy(*args: Any, **kwargs: Any) -> Future[Any]:
            fut: Future[Any] = original(*args, **kwargs)
            queued.append(fut)
            return fut

        executor.submit = spy
        try:
            asyncio.run(main())
        finally:
            del executor.submit
        assert queued and queued[0].cancelled()
        for f in blockers:
            assert f.result(timeout=BOUND) == "blocker"
        assert [f.result(timeout=BOUND) for f in fillers] == list(range(16))
