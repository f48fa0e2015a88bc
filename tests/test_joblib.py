"""The ``joblib`` backend beyond the shared contract.

The default configuration runs the whole conformance suite through
``tests/test_conformance.py``; here the same behaviour classes also run on the
other configurations (threads, ``multiprocessing``, the ``Parallel`` map
engine), followed by what only this backend promises: each executor owns its
workers, ``shutdown()`` stops them, loky's errors are translated, and large
numpy arrays still travel as memory maps.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
import time
import warnings
from concurrent.futures import BrokenExecutor, Future
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import psutil
import pytest
from joblib.externals.loky import get_reusable_executor
from joblib.externals.loky.process_executor import (
    BrokenProcessPool,
    ShutdownExecutorError,
    TerminatedWorkerError,
)

import executors
from conftest import wait_until_running
from executors import (
    ExecutorInterruptedError,
    InitializerFailedError,
    RemoteTraceback,
    WorkerCrashedError,
)
from executors._futures import Future as OurFuture
from executors._outcome import INITIALIZER_FAILED_EXITCODE
from executors._parentwatch import process_alive
from executors.backends.joblib import JoblibExecutor, translate_error
from executors.testing import (
    BOUND,
    CallbackContract,
    ContractBase,
    CrashContract,
    InitializerContract,
    MapContract,
    ShutdownContract,
    SubmitContract,
    TaskControlContract,
    tasks,
    worker_tasks,
)
from executors.testing._support import ExecutorFactory
from executors.testing.backpressure import BackpressureContract
from executors.testing.workers import (
    LogForwardingContract,
    NestedExecutorContract,
    RecyclingContract,
    ThreadLimitContract,
    WorkerFinalizerContract,
    WorkerIdentityContract,
)


def _factory(**defaults: Any) -> ExecutorFactory:
    def make(**options: Any) -> Any:
        return executors.create("joblib", **{"max_workers": 2, **defaults, **options})

    return make


# -- the contract on the other settings --------------------------------------

THREADING = {"joblib_backend": "threading"}
MULTIPROCESSING = {"joblib_backend": "multiprocessing"}
PARALLEL_ENGINE = {"map_engine": "parallel"}

#: The settings beside the default, by the name each test's id carries.
SETTINGS: dict[str, dict[str, Any]] = {
    "threading": THREADING,
    "multiprocessing": MULTIPROCESSING,
    "parallel": PARALLEL_ENGINE,
    "threading+parallel": {**THREADING, **PARALLEL_ENGINE},
    "multiprocessing+parallel": {**MULTIPROCESSING, **PARALLEL_ENGINE},
}


def _on(contract: type, *settings: str, slow: tuple[str, ...] = ()) -> type:
    """A class that runs ``contract`` once on each of ``settings``, named in
    each test's id; those in ``slow`` are marked slow."""

    @pytest.fixture(
        params=[
            pytest.param(
                SETTINGS[name],
                id=name,
                marks=[pytest.mark.slow] if name in slow else [],
            )
            for name in settings
        ]
    )
    def executor_factory(self: Any, request: pytest.FixtureRequest) -> ExecutorFactory:
        return _factory(**request.param)

    name = f"Test{contract.__name__.removesuffix('Contract')}"
    return type(name, (contract,), {"executor_factory": executor_factory})


# Which contract runs on which setting: a row a contract.
MP, SLOW_MP = "multiprocessing", ("multiprocessing",)
TestSubmit = _on(SubmitContract, "threading", MP, slow=SLOW_MP)
TestMap = _on(
    MapContract,
    *SETTINGS,
    slow=("multiprocessing", "parallel", "multiprocessing+parallel"),
)
TestShutdown = _on(ShutdownContract, "threading", MP, slow=SLOW_MP)
TestInitializer = _on(InitializerContract, "threading", MP, slow=SLOW_MP)
# Its tasks run in threads of the caller: one that submits at the
# max_pending limit must raise, not wait for a slot its own thread holds.
TestBackpressure = _on(BackpressureContract, "threading")
TestCrash = _on(CrashContract, MP, slow=SLOW_MP)
TestTaskControl = _on(TaskControlContract, "threading", MP)
TestCallbacks = _on(CallbackContract, MP, "parallel")
TestWorkerIdentity = _on(WorkerIdentityContract, MP)
TestWorkerFinalizer = _on(WorkerFinalizerContract, MP)
TestLogForwarding = _on(LogForwardingContract, MP)
TestRecycling = _on(RecyclingContract, MP)
TestThreadLimit = _on(ThreadLimitContract, MP)
TestNestedExecutor = _on(NestedExecutorContract, MP)


# -- helpers -----------------------------------------------------------------


def _worker_pids(executor: Any) -> set[int]:
    """The pids of all of the executor's workers.

    Rounds of one blocking task per worker, until every worker has answered:
    a worker that boots slowly may leave a round to the others.
    """
    pids: set[int] = set()
    deadline = time.monotonic() + BOUND
    while len(pids) < executor.max_workers:
        assert time.monotonic() < deadline, f"only saw workers {pids}"
        futs = [
            executor.submit(tasks.sleep_then_pid, 0.3)
            for _ in range(executor.max_workers)
        ]
        pids |= {f.result(timeout=BOUND) for f in futs}
    assert len(pids) == executor.max_workers
    return pids


def _wait_dead(pids: set[int]) -> set[int]:
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        alive = {pid for pid in pids if process_alive(pid)}
        if not alive:
            return alive
        time.sleep(0.05)
    return {pid for pid in pids if process_alive(pid)}


@pytest.fixture
def executor_factory() -> ExecutorFactory:
    return _factory()


# -- each executor owns its workers -------------------------------------------


class TestOwnWorkers(ContractBase):
    def test_two_executors_do_not_share_workers(
        self, make_executor: ExecutorFactory
    ) -> None:
        first, second = make_executor(), make_executor()
        first_pids, second_pids = _worker_pids(first), _worker_pids(second)
        assert not first_pids & second_pids
        first.shutdown(wait=True)
        assert not _wait_dead(first_pids)
        # The other executor neither lost nor replaced its workers.
        assert all(process_alive(pid) for pid in second_pids)
        assert _worker_pids(second) == second_pids

    def test_shutdown_stops_the_workers_before_returning(self, executor: Any) -> None:
        pids = _worker_pids(executor)
        executor.shutdown(wait=True)
        assert not {pid for pid in pids if process_alive(pid)}

    def test_shutdown_without_wait_stops_the_workers_after_the_work(
        self, executor: Any
    ) -> None:
        pids = _worker_pids(executor)
        fs = [executor.submit(tasks.sleep_and_return, 0.3, i) for i in range(5)]
        executor.shutdown(wait=False)
        assert [f.result(timeout=BOUND) for f in fs] == list(range(5))
        assert not _wait_dead(pids)

    def test_joblib_reusable_executor_is_neither_used_nor_stopped(
        self, executor: Any
    ) -> None:
        try:
            joblib_pids = set(
                joblib.Parallel(n_jobs=2)(
                    joblib.delayed(tasks.sleep_then_pid)(0.3) for _ in range(4)
                )
            )
            ours = _worker_pids(executor)
            assert not ours & joblib_pids
            executor.shutdown(wait=True)
            assert not {pid for pid in ours if process_alive(pid)}
            # joblib's workers were not stopped with ours.
            assert all(process_alive(pid) for pid in joblib_pids)
        finally:
            # joblib keeps its workers for 300 s; do not leave them behind.
            get_reusable_executor().shutdown(wait=True)

    def test_idle_worker_timeout_lets_idle_workers_exit(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(idle_worker_timeout=0.5)
        pids = _worker_pids(executor)
        assert not _wait_dead(pids)
        # loky starts new workers on demand.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3


# -- the one error boundary ---------------------------------------------------


def _terminated(codes: str) -> TerminatedWorkerError:
    return TerminatedWorkerError(
        "A worker process managed by the executor was unexpectedly terminated."
        f"\n\nThe exit codes of the workers are {codes}\nDetailed tracebacks..."
    )


class TestTranslateError:
    def test_terminated_worker_carries_its_exit_code(self) -> None:
        original = _terminated("{SIGSEGV(-11)}")
        error = translate_error(original)
        assert type(error) is WorkerCrashedError
        assert error.exitcode == -11
        assert "SIGSEGV" in str(error)
        assert error.__cause__ is original

    def test_the_first_non_zero_exit_code_wins(self) -> None:
        error = translate_error(_terminated("{EXIT(0), EXIT(3)}"))
        assert isinstance(error, WorkerCrashedError)
        assert error.exitcode == 3
        assert "exit code 3" in str(error)

    def test_unknown_exit_code(self) -> None:
        error = translate_error(TerminatedWorkerError("no codes in this message"))
        assert isinstance(error, WorkerCrashedError)
        assert error.exitcode is None

    def test_our_initializer_exit_code_means_initializer_failed(self) -> None:
        error = translate_error(_terminated(f"{{EXIT({INITIALIZER_FAILED_EXITCODE})}}"))
        assert type(error) is InitializerFailedError

    def test_other_broken_pools_are_worker_crashes(self) -> None:
        original = BrokenProcessPool("A task has failed to un-serialize.")
        error = translate_error(original)
        assert type(error) is WorkerCrashedError
        assert "un-serialize" in str(error)
        assert error.__cause__ is original

    def test_loky_shutdown_error_is_a_plain_runtime_error(self) -> None:
        message = "cannot schedule new futures after shutdown"
        error = translate_error(ShutdownExecutorError(message))
        assert type(error) is RuntimeError
        assert str(error) == message

    def test_other_exceptions_pass_unchanged(self) -> None:
        original = ValueError("mine", 1)
        assert translate_error(original) is original

    def test_each_call_makes_a_new_instance(self) -> None:
        original = _terminated("{EXIT(3)}")
        assert translate_error(original) is not translate_error(original)


class TestErrors(ContractBase):
    def test_crash_is_a_worker_crashed_error_with_the_exit_code(
        self, executor: Any
    ) -> None:
        exc = executor.submit(tasks.exit_abruptly, 3).exception(timeout=BOUND)
        assert type(exc) is WorkerCrashedError
        assert isinstance(exc, BrokenExecutor)
        assert exc.exitcode == 3
        assert "exit code 3" in str(exc)
        assert isinstance(exc.__cause__, TerminatedWorkerError)
        with pytest.raises(WorkerCrashedError):
            executor.submit(tasks.add, 1, 1)

    def test_sigkill_is_named(self, executor: Any) -> None:
        fut = executor.submit(tasks.kill_self, signal.SIGKILL)
        exc = fut.exception(timeout=BOUND)
        assert isinstance(exc, WorkerCrashedError)
        assert exc.exitcode == -signal.SIGKILL
        assert "SIGKILL" in str(exc)

    def test_every_failed_future_has_its_own_exception(self, executor: Any) -> None:
        crash = executor.submit(tasks.busy_then_exit, 0.5, 3)
        others = [executor.submit(tasks.sleep_and_return, 5.0) for _ in range(10)]
        errors = [f.exception(timeout=BOUND) for f in [crash, *others]]
        assert all(isinstance(e, WorkerCrashedError) for e in errors)
        assert len({id(e) for e in errors}) == len(errors)

    @pytest.mark.parametrize("options", [{}, MULTIPROCESSING], ids=["loky", "mp"])
    def test_raising_initializer_is_an_initializer_failure(
        self, make_executor: ExecutorFactory, options: dict[str, Any]
    ) -> None:
        executor = make_executor(initializer=tasks.failing_init, **options)
        with pytest.raises(InitializerFailedError):
            executor.submit(tasks.identity, 1).result(timeout=BOUND)
        with pytest.raises(InitializerFailedError):
            executor.submit(tasks.identity, 2).result(timeout=BOUND)

    def test_task_exception_keeps_type_args_and_remote_traceback(
        self, executor: Any
    ) -> None:
        exc = executor.submit(tasks.raise_value_error, "bad").exception(timeout=BOUND)
        assert type(exc) is ValueError
        assert exc.args == ("bad", 42)
        assert isinstance(exc.__cause__, RemoteTraceback)
        assert "raise_value_error" in str(exc.__cause__)

    def test_unpicklable_exception_does_not_break_the_pool(self, executor: Any) -> None:
        # Raw loky loses the worker (and so the whole pool) on this one.
        class _Unpicklable(Exception):
            def __init__(self) -> None:
                super().__init__("holds a lock")
                self.lock = threading.Lock()

        def fail() -> None:
            raise _Unpicklable()

        exc = executor.submit(fail).exception(timeout=BOUND)
        assert type(exc) is RuntimeError
        assert "_Unpicklable" in str(exc)
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3

    def test_multiprocessing_crash_breaks_instead_of_hanging(
        self, make_executor: ExecutorFactory
    ) -> None:
        # multiprocessing.Pool alone would wait for this task forever.
        executor = make_executor(**MULTIPROCESSING)
        exc = executor.submit(tasks.exit_abruptly, 3).exception(timeout=BOUND)
        assert isinstance(exc, WorkerCrashedError)
        assert exc.exitcode == 3
        with pytest.raises(WorkerCrashedError):
            executor.submit(tasks.add, 1, 1).result(timeout=BOUND)


class TestInterruptAndExit(ContractBase):
    @pytest.mark.parametrize(
        "options", [{}, MULTIPROCESSING], ids=["loky", "multiprocessing"]
    )
    def test_ctrl_c_in_a_with_block_stops_running_tasks(
        self, make_executor: ExecutorFactory, options: dict[str, Any]
    ) -> None:
        executor = make_executor(**options)
        futs = [executor.submit(tasks.sleep_and_return, 60.0, i) for i in range(8)]
        wait_until_running(futs[:2])
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt), executor:
            raise KeyboardInterrupt
        assert time.monotonic() - start < BOUND
        for fut in futs:
            assert fut.done()
            assert fut.cancelled() or isinstance(
                fut.exception(), ExecutorInterruptedError
            )

    @pytest.mark.slow
    @pytest.mark.parametrize(
        "options", [THREADING, MULTIPROCESSING], ids=["threading", "multiprocessing"]
    )
    def test_pending_work_completes_at_interpreter_exit(
        self, options: dict[str, Any], tmp_path: Any
    ) -> None:
        # The default configuration is covered by tests/test_exit.py.
        from _fault_scripts import Script

        count = 8  # more than the 2 * workers + 1 handed over at once
        script = Script(
            "exit_with_pending.py",
            "joblib",
            json.dumps({"max_workers": 2, **options}),
            str(tmp_path),
            str(count),
        )
        try:
            code = script.finish(120.0)
            assert code == 0, script.report()
            assert len(list(tmp_path.glob("task-*"))) == count, script.report()
            assert script.stderr == "", script.report()
        finally:
            script.kill_tree()


# -- one fault, one exception -------------------------------------------------------


@pytest.mark.parametrize("options", [{}, MULTIPROCESSING], ids=["loky", "mp"])
class TestFaultsAsElsewhere(ContractBase):
    """What the other process backends survive, this one survives too."""

    def test_argument_that_raises_while_unpickled_fails_its_future_only(
        self, make_executor: ExecutorFactory, options: dict[str, Any]
    ) -> None:
        # loky alone loses the worker ("A task has failed to un-serialize")
        # and with it every pending task.
        executor = make_executor(**options)
        others = [executor.submit(tasks.sleep_and_return, 0.2, i) for i in range(4)]
        exc = executor.submit(tasks.identity, tasks.FailsToUnpickle()).exception(
            timeout=BOUND
        )
        assert type(exc) is RuntimeError
        assert "FailsToUnpickle" in str(exc)
        assert [f.result(timeout=BOUND) for f in others] == list(range(4))
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3

    def test_result_that_cannot_be_unpickled_fails_its_future_only(
        self, make_executor: ExecutorFactory, options: dict[str, Any]
    ) -> None:
        executor = make_executor(**options)
        exc = executor.submit(tasks.return_unloadable).exception(timeout=BOUND)
        assert not isinstance(exc, BrokenExecutor)
        assert "cannot be unpickled" in str(exc)
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3


# -- task control ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
@pytest.mark.parametrize("options", [{}, MULTIPROCESSING], ids=["loky", "mp"])
def test_stopping_the_workers_resolves_everything_and_leaves_no_process(
    options: dict[str, Any], how: str
) -> None:
    executor = JoblibExecutor(max_workers=2, **options)
    pids = _worker_pids(executor)
    futs = [executor.submit(tasks.sleep_and_return, 60.0, i) for i in range(8)]
    wait_until_running(futs[:2])
    start = time.monotonic()
    getattr(executor, how)()
    assert time.monotonic() - start < 10.0
    assert all(f.done() for f in futs)
    assert all(
        f.cancelled() or isinstance(f.exception(), executors.WorkersTerminatedError)
        for f in futs
    )
    assert not _wait_dead(pids)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(tasks.noop)


def test_capabilities_declare_task_control() -> None:
    caps = JoblibExecutor.capabilities
    assert caps.task_control and caps.terminates_workers
    assert not caps.kills_single_task and not caps.stops_timed_out_tasks
    with JoblibExecutor(max_workers=1, **THREADING) as executor:
        assert executor.capabilities.task_control
        assert not executor.capabilities.terminates_workers


# -- options ----------------------------------------------------------------------


class TestOptions(ContractBase):
    @pytest.mark.parametrize(
        ("options", "error", "match"),
        [
            ({"joblib_backend": "dask"}, ValueError, "joblib_backend"),
            ({"max_tasks_per_child": 2}, ValueError, "max_tasks_per_child"),
            ({"mp_context": "fork"}, ValueError, "fork"),
            ({"mp_context": "nope"}, ValueError, "mp_context"),
            ({"mp_context": 3}, TypeError, "mp_context"),
            ({**THREADING, "mp_context": "spawn"}, ValueError, "mp_context applies"),
            ({**THREADING, "idle_worker_timeout": 1}, ValueError, "loky"),
            ({"batch_size": 4}, ValueError, "map_engine"),
            ({"pre_dispatch": "all"}, ValueError, "map_engine"),
            ({"map_engine": "dask"}, ValueError, "map_engine"),
            ({**PARALLEL_ENGINE, "batch_size": 0}, ValueError, "batch_size"),
            ({**PARALLEL_ENGINE, "batch_size": 1.5}, TypeError, "batch_size"),
            ({**PARALLEL_ENGINE, "pre_dispatch": "2 * m"}, ValueError, "pre_dispatch"),
            ({**PARALLEL_ENGINE, "pre_dispatch": 0}, ValueError, "pre_dispatch"),
            ({"max_nbytes": "1Q"}, ValueError, "max_nbytes"),
            ({"max_nbytes": -1}, ValueError, "max_nbytes"),
            ({"mmap_mode": "x"}, ValueError, "mmap_mode"),
            ({"inner_max_num_threads": 0}, ValueError, "inner_max_num_threads"),
            ({"idle_worker_timeout": -1}, ValueError, "idle_worker_timeout"),
            ({"cloudpickle": "yes"}, TypeError, "cloudpickle"),
            ({"max_memory_per_child": "1GB"}, ValueError, "multiprocessing"),
            (
                {"inner_max_num_threads": 1, "threads_per_worker": 1},
                ValueError,
                "not both",
            ),
            ({**THREADING, "finalizer": print}, ValueError, "finalizer applies"),
            ({**THREADING, "threads_per_worker": 2}, ValueError, "threads_per_w"),
            ({"finalizer": 3}, TypeError, "finalizer must be callable"),
            ({"forward_logs": 1}, TypeError, "forward_logs"),
            ({**MULTIPROCESSING, "max_memory_per_child": "lots"}, ValueError, "max_"),
        ],
    )
    def test_bad_options_are_rejected_at_creation(
        self, options: dict[str, Any], error: type[Exception], match: str
    ) -> None:
        before = set(psutil.Process().children(recursive=True))
        with pytest.raises(error, match=match):
            JoblibExecutor(max_workers=2, **options)
        started = set(psutil.Process().children(recursive=True)) - before
        assert not [
            p for p in started if "resource_tracker" not in " ".join(p.cmdline())
        ]

    def test_threading_runs_tasks_in_threads_of_this_process(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(**THREADING)
        assert executor.capabilities.process_isolation is False
        assert JoblibExecutor.capabilities.process_isolation is True
        assert executor.submit(tasks.get_pid).result(timeout=BOUND) == os.getpid()
        name = executor.submit(tasks.current_thread_name).result(timeout=BOUND)
        assert name.startswith("executors-joblib")

    def test_multiprocessing_replaces_workers_after_max_tasks_per_child(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(**MULTIPROCESSING, max_tasks_per_child=1)
        pids = [executor.submit(tasks.get_pid).result(timeout=BOUND) for _ in range(4)]
        assert len(set(pids)) == 4
        assert os.getpid() not in pids

    @pytest.mark.parametrize("method", ["spawn", "forkserver"])
    def test_loky_accepts_other_start_methods(
        self, make_executor: ExecutorFactory, method: str
    ) -> None:
        executor = make_executor(mp_context=method)
        assert executor.submit(lambda: 40 + 2).result(timeout=BOUND) == 42

    def test_worker_thread_limits_follow_joblib(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(inner_max_num_threads=1)

        def limit() -> str | None:
            return os.environ.get("OMP_NUM_THREADS")

        assert executor.submit(limit).result(timeout=BOUND) == "1"

    def test_threads_per_worker_is_inner_max_num_threads(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(threads_per_worker=1)
        variable, sizes = executor.submit(worker_tasks.thread_limits).result(
            timeout=BOUND
        )
        assert variable == "1"
        assert all(size == 1 for size in sizes), sizes

    def test_threads_per_worker_none_leaves_the_environment_alone(
        self, make_executor: ExecutorFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Neither joblib's default nor ours: the workers inherit the caller's.
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        executor = make_executor(max_workers=1, threads_per_worker=None)
        variable, _ = executor.submit(worker_tasks.thread_limits).result(timeout=BOUND)
        assert variable is None

    def test_the_loky_finalizer_runs_at_loky_idle_timeout(
        self, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        # loky lets an idle worker go: it leaves normally, so its hook runs.
        executor = make_executor(
            max_workers=1,
            idle_worker_timeout=0.5,
            finalizer=worker_tasks.write_finalized,
            finalargs=(str(tmp_path),),
        )
        wid, pid, _ = executor.submit(worker_tasks.who).result(timeout=BOUND)
        deadline = time.monotonic() + BOUND
        while not any(p.name.startswith(f"{wid}-{pid}-") for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline, "the finalizer did not run"
            time.sleep(0.05)
        # Its replacement takes the slot again.
        assert executor.submit(worker_tasks.who).result(timeout=BOUND)[0] == wid


# -- the Parallel map engine ------------------------------------------------------


def _make_probe() -> Any:
    # Local functions travel by value (cloudpickle): workers need not import
    # this test module.
    def active_joblib_backend(_: Any) -> str:
        # Inside a Parallel batch joblib sets the nested backend (threads).
        return type(joblib.parallel.get_active_backend()[0]).__name__

    return active_joblib_backend


class TestParallelEngine(ContractBase):
    @pytest.mark.parametrize("options", [{}, THREADING], ids=["loky", "threading"])
    def test_map_runs_through_joblib_parallel(
        self, make_executor: ExecutorFactory, options: dict[str, Any]
    ) -> None:
        inside = make_executor(**PARALLEL_ENGINE, **options)
        outside = make_executor(**options)
        fn = _make_probe()
        assert set(inside.map(fn, range(6))) == {"ThreadingBackend"}
        assert set(inside.map_unordered(fn, range(6))) == {"ThreadingBackend"}
        # The shared engine, and the contract's options Parallel cannot keep,
        # do not go through it.
        assert "ThreadingBackend" not in set(outside.map(fn, range(6)))
        assert "ThreadingBackend" not in set(inside.map(fn, range(6), timeout=BOUND))

    def test_results_stream_before_the_slowest_task_ends(
        self, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        executor = make_executor(**PARALLEL_ENGINE)
        executor.submit(tasks.noop).result(timeout=BOUND)  # workers started
        # "d" runs until released (6 s at most); the others return at once.
        slow = 6.0
        ready, held = str(tmp_path / "ready"), tmp_path / "held"
        Path(ready).touch()
        start = time.monotonic()
        results = executor.map(
            tasks.wait_for_path,
            [ready, ready, ready, str(held)],
            ["a", "b", "c", "d"],
            [slow] * 4,
        )
        try:
            assert next(results) == "a"
            # A list-returning Parallel call would still be waiting for "d".
            assert time.monotonic() - start < slow
        finally:
            held.touch()
        assert list(results) == ["b", "c", "d"]

    def test_ending_early_prints_no_joblib_warning(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(**PARALLEL_ENGINE)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            results = executor.map(tasks.sleep_and_return, [0.01] * 50, range(50))
            assert [next(results) for _ in range(3)] == [0, 1, 2]
            results.close()
            failing = executor.map(tasks.fail_on, range(50), [10] * 50)
            with pytest.raises(ValueError, match="item 10 is bad"):
                list(failing)
        assert not [w for w in seen if "joblib" in str(w.filename)]

    def test_map_started_before_shutdown_completes(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(**PARALLEL_ENGINE)
        results = executor.map(tasks.sleep_and_return, [0.02] * 60, range(60))
        executor.shutdown(wait=True)
        assert list(results) == list(range(60))

    def test_async_map_runs_through_joblib_parallel(
        self, make_executor: ExecutorFactory
    ) -> None:
        import asyncio

        import executors.aio

        executor = make_executor(**PARALLEL_ENGINE)
        fn = _make_probe()

        async def collect() -> list[str]:
            return [value async for value in executors.aio.map(executor, fn, range(6))]

        assert set(asyncio.run(collect())) == {"ThreadingBackend"}

    def test_fixed_batch_size_and_pre_dispatch(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(**PARALLEL_ENGINE, batch_size=7, pre_dispatch="all")
        assert list(executor.map(tasks.add, range(100), range(100))) == [
            2 * i for i in range(100)
        ]


# -- large numpy arrays -------------------------------------------------------------


def _make_describe() -> Any:
    def describe(array: Any) -> tuple[str, float, str | None]:
        name = getattr(array, "filename", None)
        return type(array).__name__, float(array.sum()), name

    return describe


_describe = _make_describe()


@pytest.fixture(scope="module")
def arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    # 5 MB each, over joblib's 1 MB memmapping threshold, and a small one.
    return [rng.random(5 * 1024 * 1024 // 8) for _ in range(6)] + [np.arange(10.0)]


class TestLargeArrays(ContractBase):
    @pytest.fixture(
        params=[{}, PARALLEL_ENGINE, MULTIPROCESSING],
        ids=["loky", "loky-parallel", "multiprocessing"],
    )
    def process_executor(
        self, make_executor: ExecutorFactory, request: pytest.FixtureRequest
    ) -> Any:
        """An executor, once in every way it reaches process workers."""
        return make_executor(**request.param)

    def test_large_arguments_travel_as_memory_maps(
        self, process_executor: Any, arrays: list[np.ndarray]
    ) -> None:
        executor = process_executor
        described = list(executor.map(_describe, arrays, timeout=None))
        assert [kind for kind, _, _ in described] == ["memmap"] * 6 + ["ndarray"]
        assert [total for _, total, _ in described] == pytest.approx(
            [float(a.sum()) for a in arrays]
        )
        kind, total, _ = executor.submit(_describe, arrays[0]).result(timeout=BOUND)
        assert kind == "memmap"
        assert total == pytest.approx(float(arrays[0].sum()))

    def test_an_argument_returned_comes_back_as_from_parallel(
        self, process_executor: Any, arrays: list[np.ndarray]
    ) -> None:
        # Returned from the worker, an argument that travelled as one of the
        # executor's temporary maps is a plain read-only array, as
        # joblib.Parallel returns it (with either of its process backends):
        # not an np.memmap detached from its (deleted) file.
        executor = process_executor
        results = [
            executor.submit(tasks.identity, arrays[0]).result(timeout=BOUND),
            *executor.map(tasks.identity, arrays[1:2], timeout=None),
        ]
        for got, array in zip(results, arrays[:2], strict=True):
            assert type(got) is np.ndarray
            assert not got.flags.writeable
            np.testing.assert_array_equal(got, array)

    def test_a_map_of_a_users_file_comes_back_as_that_map(
        self, executor: Any, tmp_path: Path
    ) -> None:
        path = tmp_path / "values.dat"
        np.arange(1000.0).tofile(path)
        got = executor.submit(_open_map, str(path)).result(timeout=BOUND)
        assert type(got) is np.memmap
        assert os.path.samefile(got.filename, path)
        np.testing.assert_array_equal(got, np.arange(1000.0))

    def test_memmapping_can_be_disabled(
        self, make_executor: ExecutorFactory, arrays: list[np.ndarray]
    ) -> None:
        executor = make_executor(max_nbytes=None)
        assert {kind for kind, _, _ in executor.map(_describe, arrays)} == {"ndarray"}

    def test_results_come_back_whole(
        self, executor: Any, arrays: list[np.ndarray]
    ) -> None:
        doubled = list(executor.map(np.multiply, arrays, [2.0] * len(arrays)))
        for got, array in zip(doubled, arrays, strict=True):
            np.testing.assert_array_equal(got, array * 2.0)

    def test_memmap_folder_is_removed_at_shutdown(
        self, executor: Any, arrays: list[np.ndarray]
    ) -> None:
        _, _, filename = executor.submit(_describe, arrays[0]).result(timeout=BOUND)
        assert filename is not None
        folder = os.path.dirname(filename)
        assert os.path.isdir(folder)
        executor.shutdown(wait=True)
        deadline = time.monotonic() + BOUND
        while os.path.exists(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(folder)


def _open_map(path: str) -> Any:
    return np.memmap(path, dtype=float, mode="r", shape=(1000,))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# A leak cycle: four executors started and stopped, seconds each for loky.
@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize(
    "options", [{}, THREADING, MULTIPROCESSING], ids=["loky", "threading", "mp"]
)
def test_shutdown_releases_every_file_descriptor(options: dict[str, Any]) -> None:
    # Without the garbage collector, and with every executor kept alive: a
    # shut-down executor must hold no descriptor (loky's manager thread keeps
    # its call queue, multiprocessing.Pool its workers' sentinels, joblib's
    # pickling queues refer to themselves).
    kept: list[JoblibExecutor] = []

    def cycle() -> None:
        executor = JoblibExecutor(max_workers=2, **options)
        kept.append(executor)
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        executor.shutdown(wait=True)

    cycle()
    gc.collect()
    gc.disable()
    try:
        before = _open_fds()
        for _ in range(3):
            cycle()
        assert _open_fds() <= before
    finally:
        gc.enable()


def test_returns_the_projects_futures_for_every_joblib_backend() -> None:
    for options in ({}, THREADING, MULTIPROCESSING):
        with JoblibExecutor(max_workers=2, **options) as executor:
            fut = executor.submit(tasks.add, 1, 2)
            assert type(fut) is OurFuture
            assert isinstance(fut, Future)
            assert fut.result(timeout=BOUND) == 3
