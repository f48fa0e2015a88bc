"""What the ``mp_pool`` backend adds to raw ``multiprocessing.Pool``.

The shared contract runs in tests/test_conformance.py and the crash matrix in
tests/test_faults.py. These tests pin down the places where raw Pool hangs
or loses information and this backend does not: a worker that dies in a
``map``, a failing initializer, results that do not pickle, cancellation,
``max_tasks_per_child``, interpreter exit, and stopping one task (a timeout,
``kill_task``) without breaking the pool.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import BrokenExecutor, CancelledError
from pathlib import Path
from typing import Any

import psutil
import pytest

import executors
from conftest import backend_factory, interrupt_a_busy_with_block
from executors import (
    InitializerFailedError,
    RemoteTraceback,
    TaskKilledError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkersTerminatedError,
    with_options,
)
from executors._errors import ExecutorInterruptedError
from executors._parentwatch import process_alive
from executors.testing import BOUND, ContractBase, child_processes, tasks
from executors.testing._support import (
    ExecutorFactory,
    wait_for_file,
    wait_for_no_new_children,
)


@pytest.fixture
def executor_factory() -> Callable[..., Any]:
    return backend_factory("mp_pool")


def _exit_on(x: int, bad: int) -> int:
    if x == bad:
        os._exit(3)
    return x


class TestWorkerDeath(ContractBase):
    """A dead worker fails futures with WorkerCrashedError; nothing hangs."""

    def test_death_mid_map_raises_instead_of_hanging(self, executor: Any) -> None:
        results = executor.map(_exit_on, range(200), [120] * 200, chunksize=1)
        got = []
        with pytest.raises(WorkerCrashedError) as info:
            for value in results:
                got.append(value)
        # Everything yielded is correct and in order, up to the breakage.
        assert got == list(range(len(got)))
        assert len(got) <= 120
        assert "exit code 3" in str(info.value)
        assert info.value.exitcode == 3

    def test_death_mid_map_unordered(self, executor: Any) -> None:
        results = executor.map_unordered(_exit_on, range(100), [10] * 100)
        with pytest.raises(WorkerCrashedError):
            list(results)

    def test_message_names_the_signal(self, executor: Any) -> None:
        fut = executor.submit(tasks.kill_self, signal.SIGKILL)
        exc = fut.exception(timeout=BOUND)
        assert isinstance(exc, WorkerCrashedError)
        assert "SIGKILL" in str(exc)
        assert exc.exitcode == -signal.SIGKILL

    def test_pool_is_broken_for_good(self, executor: Any) -> None:
        queued = [executor.submit(tasks.sleep_and_return, 0.5, i) for i in range(8)]
        crash = executor.submit(tasks.exit_abruptly, 5)
        assert isinstance(crash.exception(timeout=BOUND), WorkerCrashedError)
        for fut in queued:
            exc = fut.exception(timeout=BOUND)
            assert exc is None or isinstance(exc, WorkerCrashedError)
        with pytest.raises(WorkerCrashedError, match="exit code 5"):
            executor.submit(tasks.add, 1, 1)
        with pytest.raises(WorkerCrashedError):
            executor.map(tasks.identity, [1, 2])

    def test_idle_worker_killed_from_outside_breaks_the_pool(
        self, executor: Any
    ) -> None:
        # An idle worker may hold the lock on Pool's task pipe when it dies;
        # the pool cannot safely go on, so it breaks instead of wedging.
        pids = {executor.submit(tasks.get_pid).result(timeout=BOUND) for _ in range(4)}
        os.kill(next(iter(pids)), signal.SIGKILL)
        deadline = time.monotonic() + BOUND
        while True:
            try:
                fut = executor.submit(tasks.sleep_and_return, 0.01, "ok")
            except BrokenExecutor:
                break
            exc = fut.exception(timeout=BOUND)
            if exc is not None:
                assert isinstance(exc, WorkerCrashedError)
                break
            assert time.monotonic() < deadline, "the dead worker was never noticed"
            time.sleep(0.05)

    def test_exit_zero_in_a_task_is_a_crash_even_with_max_tasks_per_child(
        self, make_executor: ExecutorFactory
    ) -> None:
        # A worker retiring after max_tasks_per_child also exits with 0: the
        # backend tells them apart, so os._exit(0) mid-task cannot hang.
        executor = make_executor(max_tasks_per_child=3)
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        fut = executor.submit(tasks.exit_abruptly, 0)
        exc = fut.exception(timeout=BOUND)
        assert isinstance(exc, WorkerCrashedError)
        assert "exit code 0" in str(exc)


class TestInitializer(ContractBase):
    """A failing initializer raises instead of restarting workers forever."""

    def test_raising_initializer_reports_its_exception(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(initializer=tasks.failing_init)
        exc = executor.submit(tasks.identity, 1).exception(timeout=BOUND)
        assert isinstance(exc, InitializerFailedError)
        assert "initializer failed on purpose" in str(exc)
        assert isinstance(exc.__cause__, RemoteTraceback)
        assert "failing_init" in str(exc.__cause__)
        with pytest.raises(InitializerFailedError):
            executor.submit(tasks.identity, 2)

    @pytest.mark.parametrize(
        ("initializer", "described"),
        [(tasks.exiting_init, "exit code 7"), (tasks.segfaulting_init, "SIGSEGV")],
    )
    def test_initializer_that_kills_its_worker(
        self, make_executor: ExecutorFactory, initializer: Any, described: str
    ) -> None:
        executor = make_executor(initializer=initializer)
        exc = executor.submit(tasks.identity, 1).exception(timeout=BOUND)
        assert isinstance(exc, InitializerFailedError)
        assert described in str(exc)

    def test_no_worker_keeps_restarting(self, make_executor: ExecutorFactory) -> None:
        before = child_processes()
        executor = make_executor(initializer=tasks.failing_init)
        with pytest.raises(InitializerFailedError):
            executor.submit(tasks.identity, 1).result(timeout=BOUND)
        # Broken: the Pool is dismantled without being asked to shut down.
        assert not wait_for_no_new_children(before)

    def test_lambda_initializer(self, make_executor: ExecutorFactory) -> None:
        executor = make_executor(
            initializer=lambda v: tasks.record_init(v * 2), initargs=(21,)
        )
        assert executor.submit(tasks.read_init).result(timeout=BOUND) == 42


class TestPickling(ContractBase):
    """Pickling failures fail one future with the original error."""

    def test_unpicklable_result_keeps_its_error_type(self, executor: Any) -> None:
        # Raw Pool reports both as MaybeEncodingError, the type lost.
        exc = executor.submit(tasks.return_lock).exception(timeout=BOUND)
        assert type(exc) is TypeError
        assert "lock" in str(exc)
        exc = executor.submit(tasks.return_raises_on_pickle).exception(timeout=BOUND)
        assert type(exc) is ValueError
        assert "RaisesOnPickle" in str(exc)
        assert isinstance(exc.__cause__, RemoteTraceback)
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3

    def test_result_that_fails_to_unpickle_in_the_caller(self, executor: Any) -> None:
        # Raw Pool's result thread dies on it, and every later result is lost.
        exc = executor.submit(tasks.return_unloadable).exception(timeout=BOUND)
        assert type(exc) is RuntimeError
        assert [
            executor.submit(tasks.add, i, 1).result(timeout=BOUND) for i in range(3)
        ] == [1, 2, 3]

    def test_unpicklable_argument_fails_at_submit_time(self, executor: Any) -> None:
        fut = executor.submit(tasks.identity, threading.Lock())
        # Pickled in submit(): the future is already failed, nothing was sent.
        assert fut.done()
        assert type(fut.exception()) is TypeError

    def test_argument_that_raises_while_unpickled_is_the_task_error(
        self, executor: Any
    ) -> None:
        # Raw Pool's worker dies on it (and the task is lost).
        exc = executor.submit(tasks.identity, tasks.FailsToUnpickle()).exception(
            timeout=BOUND
        )
        assert type(exc) is RuntimeError
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3

    def test_connections_pickle_as_pool_sends_them(self, executor: Any) -> None:
        # Multiprocessing's own reducers are kept: a pipe end still works
        # (plain pickle would silently send its bare file descriptor number).
        reader, writer = multiprocessing.Pipe(duplex=False)
        try:
            fut = executor.submit(_send_through, writer, "hello")
            assert fut.result(timeout=BOUND) is None
            assert reader.poll(BOUND)
            assert reader.recv() == "hello"
        finally:
            reader.close()
            writer.close()


def _send_through(conn: Any, value: Any) -> None:
    conn.send(value)


class TestCancel(ContractBase):
    """Our queue in front of the Pool keeps queued futures cancellable."""

    def test_cancelled_tasks_never_run(self, executor: Any, tmp_path: Path) -> None:
        blockers = [
            executor.submit(tasks.sleep_and_return, 0.5, "b")
            for _ in range(executor.max_workers)
        ]
        queued = [
            executor.submit(tasks.touch_after, str(tmp_path / f"t{i}"), 0.0)
            for i in range(20)
        ]
        cancelled = [i for i, f in enumerate(queued) if f.cancel()]
        # At most two tasks per worker are handed to the Pool.
        assert len(cancelled) >= 20 - executor.max_workers
        for f in blockers:
            assert f.result(timeout=BOUND) == "b"
        for i, f in enumerate(queued):
            if i in cancelled:
                with pytest.raises(CancelledError):
                    f.result(timeout=BOUND)
            else:
                f.result(timeout=BOUND)
        executor.shutdown(wait=True)
        ran = {p.name for p in tmp_path.iterdir()}
        assert ran == {f"t{i}" for i in range(20) if i not in cancelled}

    def test_dispatched_futures_report_running(self, executor: Any) -> None:
        fut = executor.submit(tasks.sleep_and_return, 0.3, 1)
        assert fut.running()
        assert not fut.cancel()
        assert fut.result(timeout=BOUND) == 1

    def test_wait_returns_for_futures_cancelled_by_shutdown(
        self, executor: Any
    ) -> None:
        # CPython gh-109934: cancelled futures that nobody dequeues hang
        # concurrent.futures.wait(); the backend notifies them.
        blockers = [
            executor.submit(tasks.sleep_and_return, 0.3, i)
            for i in range(2 * executor.max_workers)
        ]
        queued = [executor.submit(tasks.identity, i) for i in range(10)]
        executor.shutdown(wait=False, cancel_futures=True)
        _, not_done = futures.wait([*blockers, *queued], timeout=BOUND)
        assert not not_done
        assert all(f.cancelled() for f in queued)

    def test_closing_a_map_early_cancels_queued_chunks(
        self, executor: Any, tmp_path: Path
    ) -> None:
        paths = [str(tmp_path / f"m{i}") for i in range(30)]
        results = executor.map(tasks.touch_after, paths, [0.1] * 30)
        next(results)
        results.close()
        executor.shutdown(wait=True)
        assert len(list(tmp_path.iterdir())) < 30


class TestMaxTasksPerChild(ContractBase):
    """``max_tasks_per_child`` replaces workers; a clean retirement is no crash."""

    def test_workers_are_replaced(self, make_executor: ExecutorFactory) -> None:
        executor = make_executor(max_tasks_per_child=1)
        pids = [executor.submit(tasks.get_pid).result(timeout=BOUND) for _ in range(6)]
        assert len(set(pids)) == 6
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2

    def test_map_across_many_replacements(self, make_executor: ExecutorFactory) -> None:
        executor = make_executor(max_tasks_per_child=2)
        assert list(executor.map(tasks.identity, range(12), chunksize=1)) == list(
            range(12)
        )

    def test_crash_is_still_detected(self, make_executor: ExecutorFactory) -> None:
        executor = make_executor(max_tasks_per_child=2)
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        exc = executor.submit(tasks.exit_abruptly, 4).exception(timeout=BOUND)
        assert isinstance(exc, WorkerCrashedError)


class TestTaskControl(ContractBase):
    """One task stops without breaking the pool; stopping all leaves nothing."""

    def test_kill_task_replaces_only_that_worker(
        self, executor: Any, tmp_path: Path
    ) -> None:
        target = executor.submit(
            tasks.write_pid_then_sleep, str(tmp_path / "target"), 30.0, "target"
        )
        other = executor.submit(
            tasks.write_pid_then_sleep, str(tmp_path / "other"), 1.0, "other"
        )
        killed_pid = int(wait_for_file(tmp_path / "target"))
        wait_for_file(tmp_path / "other")
        assert executor.kill_task(target)
        with pytest.raises(TaskKilledError):
            target.result(timeout=BOUND)
        # The other worker's task was not lost: the pool did not break.
        assert other.result(timeout=BOUND) == "other"
        deadline = time.monotonic() + BOUND
        while process_alive(killed_pid):
            assert time.monotonic() < deadline, "the killed worker lives on"
            time.sleep(0.01)
        pids = {executor.submit(tasks.get_pid).result(timeout=BOUND) for _ in range(6)}
        assert killed_pid not in pids
        assert not executor.kill_task(target)  # done already

    def test_a_timed_out_task_is_stopped_not_abandoned(
        self, executor: Any, tmp_path: Path
    ) -> None:
        marker = tmp_path / "ran-to-its-end"
        slow = with_options(tasks.touch_after, timeout=0.5)
        fut = executor.submit(slow, str(marker), 1.5)
        with pytest.raises(TaskTimeoutError, match="stopped"):
            fut.result(timeout=BOUND)
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3
        time.sleep(1.5)
        assert not marker.exists()

    def test_a_task_stopped_before_it_started_never_runs(
        self, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        executor = make_executor(max_workers=1)
        pid = executor.submit(tasks.get_pid).result(timeout=BOUND)
        blocker = executor.submit(tasks.sleep_and_return, 1.0, "blocker")
        # Two calls per worker are handed to Pool: this one waits in its
        # pipe behind the blocker, "running" but not started.
        waiting = executor.submit(tasks.touch_after, str(tmp_path / "ran"), 0.0)
        assert waiting.running()
        assert executor.kill_task(waiting)
        with pytest.raises(TaskKilledError):
            waiting.result(timeout=BOUND)
        assert blocker.result(timeout=BOUND) == "blocker"
        # The worker skipped the call and lives on.
        assert executor.submit(tasks.get_pid).result(timeout=BOUND) == pid
        assert not (tmp_path / "ran").exists()

    def test_kill_task_is_false_where_there_is_nothing_to_stop(
        self, executor: Any
    ) -> None:
        done = executor.submit(tasks.add, 1, 1)
        assert done.result(timeout=BOUND) == 2
        assert not executor.kill_task(done)
        assert not executor.kill_task(futures.Future())

    def test_a_crash_after_a_kill_still_breaks_the_pool(
        self, executor: Any, tmp_path: Path
    ) -> None:
        target = executor.submit(
            tasks.write_pid_then_sleep, str(tmp_path / "pid"), 30.0
        )
        wait_for_file(tmp_path / "pid")
        assert executor.kill_task(target)
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        exc = executor.submit(tasks.exit_abruptly, 4).exception(timeout=BOUND)
        assert isinstance(exc, WorkerCrashedError)

    def test_kill_task_with_max_tasks_per_child(
        self, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        executor = make_executor(max_tasks_per_child=1)
        target = executor.submit(
            tasks.write_pid_then_sleep, str(tmp_path / "pid"), 30.0
        )
        wait_for_file(tmp_path / "pid")
        assert executor.kill_task(target)
        got = [executor.submit(tasks.add, i, 1).result(timeout=BOUND) for i in range(6)]
        assert got == list(range(1, 7))

    @pytest.mark.timeout(120)
    def test_kills_racing_with_completions_never_hang_the_pool(
        self, executor: Any
    ) -> None:
        # A worker killed just after its task returned (idle on Pool's task
        # pipe, holding its lock, or sending its result) would hang the
        # pool. Kill the oldest running future of a stream of instant tasks,
        # the one most likely to be finishing: every future must still
        # resolve, with its value or TaskKilledError. (Killing by a pid
        # table that can be stale hangs here within a few kills.)
        rng = random.Random(18)
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        fs: list[futures.Future[Any]] = []
        kills = 0
        deadline = time.monotonic() + BOUND * 4
        for _ in range(4):
            batch = [
                executor.submit(tasks.sleep_and_return, rng.choice([0, 0, 0.0005]), i)
                for i in range(len(fs), len(fs) + 1000)
            ]
            fs += batch
            batch_kills = 0
            while batch_kills < 15 and time.monotonic() < deadline:
                running = [f for f in batch if f.running()]
                if not running and all(f.done() for f in batch):
                    break
                if running and executor.kill_task(running[0]):
                    batch_kills += 1
                time.sleep(rng.random() * 0.002)
            kills += batch_kills
        _, pending = futures.wait(fs, timeout=BOUND)
        if pending:
            executor.kill_workers()  # a hung pool would hang the teardown
        assert not pending, f"{len(pending)} futures never resolved"
        for i, f in enumerate(fs):
            exc = f.exception()
            if exc is None:
                assert f.result() == i
            else:
                assert isinstance(exc, TaskKilledError), exc
        assert kills > 0
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2

    def test_the_clock_waits_for_the_workers_to_start(
        self, make_executor: ExecutorFactory
    ) -> None:
        # Workers whose initializer takes longer than the timeout: the
        # call waits for one to be ready, and its clock starts there.
        executor = make_executor(initializer=time.sleep, initargs=(1.0,))
        quick = with_options(tasks.sleep_and_return, timeout=0.5)
        assert executor.submit(quick, 0.05, "ok").result(timeout=BOUND) == "ok"

    @pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
    def test_stopping_the_workers_is_no_crash(
        self, make_executor: ExecutorFactory, how: str
    ) -> None:
        before = child_processes()
        executor = make_executor()
        running = [
            executor.submit(tasks.sleep_and_return, 30.0, i)
            for i in range(executor.max_workers)
        ]
        queued = executor.submit(tasks.sleep_and_return, 30.0, "queued")
        deadline = time.monotonic() + BOUND
        while executor._watch.ready_workers() < executor.max_workers:
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.01)
        start = time.monotonic()
        getattr(executor, how)()
        assert time.monotonic() - start < 5.0
        for fut in running:
            assert isinstance(fut.exception(timeout=0), WorkersTerminatedError)
        assert queued.cancelled() or isinstance(
            queued.exception(timeout=0), WorkersTerminatedError
        )
        # Shut down, not broken by the deaths it caused.
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit(tasks.add, 1, 1)
        assert not wait_for_no_new_children(before, bound=5.0)


class TestShutdown(ContractBase):
    """Shutdown never hangs and leaves no process behind."""

    def test_no_orphans_after_shutdown_without_wait(
        self, make_executor: ExecutorFactory
    ) -> None:
        before = child_processes()
        executor = make_executor()
        fs = [executor.submit(tasks.sleep_and_return, 0.2, i) for i in range(6)]
        start = time.monotonic()
        executor.shutdown(wait=False)
        assert time.monotonic() - start < 1.0
        assert [f.result(timeout=BOUND) for f in fs] == list(range(6))
        assert not wait_for_no_new_children(before)

    def test_shutdown_from_a_done_callback_does_not_deadlock(
        self, executor: Any
    ) -> None:
        called = threading.Event()

        def stop(_: Any) -> None:
            executor.shutdown(wait=True)  # from Pool's result thread
            called.set()

        fut = executor.submit(tasks.add, 1, 2)
        fut.add_done_callback(stop)
        assert called.wait(BOUND)
        executor.shutdown(wait=True)

    def test_submit_from_a_done_callback(self, executor: Any) -> None:
        second: list[Any] = []
        fut = executor.submit(tasks.add, 1, 2)
        fut.add_done_callback(
            lambda f: second.append(executor.submit(tasks.add, f.result(), 1))
        )
        fut.result(timeout=BOUND)
        deadline = time.monotonic() + BOUND
        while not second:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert second[0].result(timeout=BOUND) == 4

    def test_shutdown_after_a_crash_is_prompt(self, executor: Any) -> None:
        payload = b"x" * (512 * 1024)  # more than a pipe buffer in flight
        fs = [executor.submit(tasks.identity, payload) for _ in range(6)]
        crash = executor.submit(tasks.exit_abruptly, 3)
        assert isinstance(crash.exception(timeout=BOUND), WorkerCrashedError)
        start = time.monotonic()
        executor.shutdown(wait=True)
        assert time.monotonic() - start < BOUND
        assert all(f.done() for f in fs)

    def test_garbage_collected_executor_closes_its_pool(self) -> None:
        before = child_processes()
        executor = executors.create("mp_pool", max_workers=2)
        fut = executor.submit(tasks.sleep_and_return, 0.2, "done")
        del executor
        gc.collect()
        assert fut.result(timeout=BOUND) == "done"
        assert not wait_for_no_new_children(before)

    @pytest.mark.timeout(60)
    def test_ctrl_c_in_a_with_block_stops_running_tasks(
        self, make_executor: ExecutorFactory
    ) -> None:
        # Leaving a with block on KeyboardInterrupt must not wait for the
        # running tasks: they fail with ExecutorInterruptedError, the queued
        # ones are cancelled, and the workers are killed at once.
        before = child_processes()
        executor = make_executor()
        pids = {executor.submit(tasks.get_pid).result(timeout=BOUND)}
        running, queued, took = interrupt_a_busy_with_block(
            executor, executor.max_workers, 20
        )
        assert took < 10
        for fut in running:
            assert isinstance(fut.exception(timeout=0), ExecutorInterruptedError)
        # Queued futures are cancelled, except those handed to the Pool
        # already (two per worker), which are failed with the running ones.
        for fut in queued:
            assert fut.cancelled() or isinstance(
                fut.exception(timeout=0), ExecutorInterruptedError
            )
        assert sum(f.cancelled() for f in queued) >= 20 - executor.max_workers
        assert not [pid for pid in pids if process_alive(pid)]
        assert not wait_for_no_new_children(before)

    @pytest.mark.parametrize(
        ("option", "value", "error"),
        [
            ("max_workers", 0, ValueError),
            ("max_workers", "2", TypeError),
            ("mp_context", "no-such-method", ValueError),
            ("mp_context", 3, TypeError),
            ("max_tasks_per_child", 0, ValueError),
            ("max_tasks_per_child", 1.5, TypeError),
            ("initializer", 42, TypeError),
            ("initargs", [1], TypeError),
            ("cloudpickle", "yes", TypeError),
        ],
    )
    def test_bad_options_raise_eagerly(
        self, option: str, value: Any, error: type[Exception]
    ) -> None:
        before = child_processes()
        with pytest.raises(error, match=option):
            executors.create("mp_pool", **{option: value})
        assert not wait_for_no_new_children(before, bound=1.0)


_EXIT_SCRIPT = """
import os, sys
import executors
from executors.testing import tasks

directory = sys.argv[1]
ex = executors.create("mp_pool", max_workers=2)
print("PIDS", *sorted({ex.submit(tasks.get_pid).result(60) for _ in range(8)}), flush=True)
futs = [ex.submit(tasks.touch_after, os.path.join(directory, f"t{i}"), 0.2)
        for i in range(8)]
if sys.argv[2] == "no-wait":
    ex.shutdown(wait=False)
# Falls off the end with the work pending.
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["no-shutdown", "no-wait"])
def test_interpreter_exit_completes_pending_work(tmp_path: Path, mode: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_EXIT_SCRIPT), str(tmp_path), mode],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"t{i}" for i in range(8)]
    pids = [int(p) for p in proc.stdout.split("PIDS", 1)[1].split()]

    deadline = time.monotonic() + BOUND
    while any(psutil.pid_exists(p) for p in pids):
        alive = [p for p in pids if psutil.pid_exists(p)]
        zombies = [
            p for p in alive if psutil.Process(p).status() == psutil.STATUS_ZOMBIE
        ]
        if alive == zombies:
            break
        assert time.monotonic() < deadline, f"workers outlived the program: {alive}"
        time.sleep(0.05)


_FORK_SCRIPT = """
import executors
from executors.testing import tasks
ex = executors.create("mp_pool", max_workers=2, mp_context="fork", max_tasks_per_child=1)
print(sorted(ex.map(tasks.identity, range(6), chunksize=1)))
ex.shutdown()
"""


def test_fork_context_workers_exit_cleanly() -> None:
    # A forked worker inherits the parent's exit hook; running it there
    # would touch the parent's locks. Retiring six workers must not stall.
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_FORK_SCRIPT)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 1, 2, 3, 4, 5]"
    assert proc.stderr == ""
