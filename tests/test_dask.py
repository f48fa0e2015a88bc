"""The ``dask`` backend beyond the shared contract.

``tests/test_conformance.py`` runs the whole suite on the default setup (a
fresh ``LocalCluster`` per test). Here the contract also runs through
``client=`` on a cluster shared by the module, followed by what only this
backend promises: arguments are never unpickled in the caller's process,
identical submissions run separately, queued futures are held back from Dask
(so ``cancel()`` is honest and tasks in flight stay bounded), Dask's
``KilledWorker`` becomes ``WorkerCrashedError``, the initializer reaches
workers that join or restart later, and ``shutdown()`` leaves no process,
thread or listening socket behind.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, CancelledError, Future
from pathlib import Path
from typing import Any

import distributed
import psutil
import pytest

import executors
from executors import (
    InitializerFailedError,
    RemoteTraceback,
    TaskKilledError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkersTerminatedError,
    with_options,
)
from executors.backends.dask import DaskExecutor
from executors.testing import (
    BOUND,
    InitializerContract,
    MapContract,
    ShutdownContract,
    SubmitContract,
    child_processes,
    tasks,
    wait_for_no_new_children,
)
from executors.testing._support import ExecutorFactory

# A warm forkserver starts workers in a fraction of spawn's time.
FAST = {"max_workers": 2, "mp_context": "forkserver"}


def _create(**options: Any) -> DaskExecutor:
    executor = executors.create("dask", **{**FAST, **options})
    assert isinstance(executor, DaskExecutor)
    return executor


def _local_cluster(n_workers: int, folder: Path) -> Any:
    """A cluster of Dask's own, its files in ``folder`` (by default Dask
    leaves ``$TMPDIR/dask-scratch-space`` behind)."""
    return distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        local_directory=str(folder),
        scheduler_kwargs={
            "dashboard": False,
            "dashboard_address": "127.0.0.1:0",
            "local_directory": str(folder),
        },
    )


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _listening() -> set[tuple[str, int]]:
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process().net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }


def _our_threads() -> set[str]:
    # Process-wide, not an executor's to stop: Dask-Offload, distributed's
    # thread pool shared by every client, and the core's reaper of dropped
    # executors, started by the first executor (see close_when_collected).
    return {
        t.name
        for t in threading.enumerate()
        if not t.name.startswith("Dask-Offload") and t.name != "executors-reaper"
    }


# -- the contract through client=, on one cluster shared by the module ------


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cluster = _local_cluster(2, tmp_path_factory.mktemp("dask"))
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


class _ClientVariant:
    @pytest.fixture
    def executor_factory(self, shared_client: Any) -> ExecutorFactory:
        def make(**options: Any) -> Any:
            return executors.create("dask", client=shared_client, **options)

        return make


class TestClientSubmit(_ClientVariant, SubmitContract):
    pass


class TestClientMap(_ClientVariant, MapContract):
    pass


class TestClientShutdown(_ClientVariant, ShutdownContract):
    pass


class TestClientInitializer(_ClientVariant, InitializerContract):
    pass


def test_client_mode_closes_nothing_and_removes_its_plugin(shared_client: Any) -> None:
    executor = executors.create(
        "dask", client=shared_client, initializer=tasks.record_init, initargs=("x",)
    )
    assert executor.submit(tasks.read_init).result(timeout=BOUND) == "x"
    plugins = shared_client.cluster.scheduler.worker_plugins
    assert any(name.startswith("executors-initializer-") for name in plugins)
    executor.shutdown()
    assert not any(name.startswith("executors-initializer-") for name in plugins)
    # The caller's client and cluster still work.
    assert shared_client.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3


# -- options ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_workers": 0}, ValueError, "max_workers must be greater than 0"),
        ({"address": "tcp://x:1", "client": object()}, ValueError, "not both"),
        ({"address": 42}, TypeError, "address"),
        ({"client": "tcp://x:1"}, TypeError, "distributed.Client"),
        ({"allowed_failures": -1}, ValueError, "allowed_failures"),
        ({"allowed_failures": 1.5}, TypeError, "allowed_failures"),
        ({"max_in_flight": 0}, ValueError, "max_in_flight"),
        ({"mp_context": "fork"}, ValueError, "mp_context"),
        ({"cluster_options": {"n_workers": 3}}, ValueError, "n_workers"),
        ({"cluster_options": [("a", 1)]}, TypeError, "cluster_options"),
        ({"dashboard_address": 8787}, TypeError, "dashboard_address"),
        ({"connect_timeout": -1}, ValueError, "connect_timeout"),
        ({"initializer": 3}, TypeError, "initializer"),
    ],
)
def test_bad_options_raise_at_create(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        executors.create("dask", **options)


@pytest.mark.parametrize(
    "option",
    [
        {"max_workers": 2},
        {"allowed_failures": 2},
        {"mp_context": "spawn"},
        {"dashboard_address": "127.0.0.1:0"},
        {"cluster_options": {}},
    ],
)
def test_local_cluster_options_are_refused_with_a_client(
    shared_client: Any, option: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="local cluster"):
        executors.create("dask", client=shared_client, **option)


def test_an_unreachable_address_fails_at_create() -> None:
    threads = _our_threads()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    with pytest.raises(OSError, match="connect"):
        executors.create("dask", address=f"tcp://127.0.0.1:{port}", connect_timeout=1)
    _wait_until(lambda: _our_threads() == threads, "the client's threads to end")


def test_create_and_bad_calls_start_nothing() -> None:
    before = child_processes()
    threads = _our_threads()
    executor = _create()
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(tasks.identity, [1], chunksize=0)
    with pytest.raises(TypeError, match="callable"):
        executor.submit(None)
    assert child_processes() == before
    assert _our_threads() == threads
    executor.shutdown()


# -- submission ------------------------------------------------------------


@pytest.mark.slow
def test_identical_submissions_run_separately(tmp_path: Path) -> None:
    log = tmp_path / "runs"

    def run(path: str) -> str:
        with open(path, "a") as f:
            f.write("ran\n")
        time.sleep(0.2)
        return "done"

    with _create() as executor:
        futures = [executor.submit(run, str(log)) for _ in range(5)]
        assert [f.result(timeout=BOUND) for f in futures] == ["done"] * 5
    assert log.read_text().splitlines() == ["ran"] * 5


def test_a_queued_future_is_held_back_and_cancel_is_final(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with _create() as executor:
        blockers = [executor.submit(tasks.sleep_and_return, 0.5, i) for i in range(2)]
        _wait_until(lambda: all(f.running() for f in blockers), "blockers to run")
        queued = executor.submit(tasks.touch_after, str(marker), 0.0)
        assert not queued.running()
        assert queued.cancel()
        assert [f.result(timeout=BOUND) for f in blockers] == [0, 1]
        # Whatever comes next runs; the cancelled task never does.
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
    with pytest.raises(CancelledError):
        queued.result(timeout=0)
    assert not marker.exists()


def test_tasks_in_dask_never_outnumber_worker_threads(shared_client: Any) -> None:
    scheduler = shared_client.cluster.scheduler
    seen: list[int] = []
    with executors.create("dask", client=shared_client) as executor:
        assert executor.max_workers == 2
        futures = [executor.submit(tasks.sleep_and_return, 0.02, i) for i in range(60)]
        while not all(f.done() for f in futures):
            seen.append(sum(len(ws.processing) for ws in scheduler.workers.values()))
            time.sleep(0.005)
        assert [f.result() for f in futures] == list(range(60))
    assert max(seen) <= 2


def test_map_sends_chunks_not_items(shared_client: Any) -> None:
    with (
        executors.create("dask", client=shared_client) as executor,
        distributed.get_task_stream(client=shared_client) as stream,
    ):
        assert sum(executor.map(tasks.identity, range(20_000))) == sum(range(20_000))
    assert 0 < len(stream.data) < 200


# -- safety of the caller ------------------------------------------------------


@pytest.mark.parametrize(
    "arg",
    [tasks.SegfaultsOnUnpickle(), tasks.ExitsOnUnpickle()],
    ids=lambda arg: type(arg).__name__,
)
def test_an_argument_that_kills_its_unpickler_spares_the_caller(arg: Any) -> None:
    # With Dask alone the scheduler, in this process, unpickles arguments:
    # this test process would die with SIGSEGV.
    with _create() as executor:
        fut = executor.submit(tasks.identity, arg)
        with pytest.raises(WorkerCrashedError):
            fut.result(timeout=BOUND)
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3


def test_an_argument_that_fails_to_unpickle_is_the_task_error() -> None:
    with _create() as executor:
        fut = executor.submit(tasks.identity, tasks.FailsToUnpickle())
        with pytest.raises(RuntimeError, match="raised while being unpickled"):
            fut.result(timeout=BOUND)
        assert isinstance(fut.exception().__cause__, RemoteTraceback)


def test_pickling_errors_are_the_standard_ones() -> None:
    # Dask's own path would raise TypeError("Could not serialize object ...").
    with _create() as executor:
        exc = executor.submit(tasks.identity, threading.Lock()).exception(BOUND)
        assert type(exc) is TypeError
        assert str(exc) == "cannot pickle '_thread.lock' object"
        exc = executor.submit(tasks.return_lock).exception(BOUND)
        assert type(exc) is TypeError
        assert "cannot pickle '_thread.lock' object" in str(exc)


def test_exceptions_keep_their_attributes_despite_tblib() -> None:
    # Importing distributed installs tblib's exception reducers, which
    # return SystemExit(5) with code None.
    with _create() as executor:
        exc = executor.submit(tasks.raise_system_exit, 5).exception(BOUND)
        assert isinstance(exc, SystemExit)
        assert exc.code == 5
        custom = executor.submit(tasks.raise_custom, 7).exception(BOUND)
        assert isinstance(custom, tasks.CustomError)
        assert (custom.code, custom.detail) == (7, "custom failure")


# -- worker loss ---------------------------------------------------------------


def test_killed_worker_becomes_worker_crashed_error() -> None:
    with _create() as executor:
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        exc = executor.submit(tasks.exit_abruptly, 3).exception(BOUND)
        assert isinstance(exc, WorkerCrashedError)
        assert isinstance(exc, BrokenExecutor)
        assert isinstance(exc.__cause__, distributed.KilledWorker)
        assert "died 2 time(s)" in str(exc)
        assert executor.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4


def test_without_retries_a_worker_killed_once_fails_its_task(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with _create(allowed_failures=0) as executor:
        fut = executor.submit(tasks.write_pid_then_sleep, str(pidfile), 5.0, "ran")
        _wait_until(pidfile.exists, "the task to start")
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        with pytest.raises(WorkerCrashedError, match="died 1 time"):
            fut.result(timeout=BOUND)
        assert executor.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4


def test_initializer_runs_again_in_a_restarted_worker() -> None:
    with _create(
        max_workers=1, initializer=tasks.record_init, initargs=("ready",)
    ) as executor:
        first = executor.submit(tasks.get_pid).result(timeout=BOUND)
        with pytest.raises(WorkerCrashedError):
            executor.submit(tasks.exit_abruptly, 3).result(timeout=BOUND)
        assert executor.submit(tasks.get_pid).result(timeout=BOUND) != first
        assert executor.submit(tasks.read_init).result(timeout=BOUND) == "ready"


def test_initializer_reaches_workers_that_join_later(tmp_path: Path) -> None:
    cluster = _local_cluster(1, tmp_path)
    client = distributed.Client(cluster, set_as_default=False)
    try:
        executor = executors.create(
            "dask", client=client, initializer=tasks.record_init, initargs=("ready",)
        )
        assert executor.submit(tasks.read_init).result(timeout=BOUND) == "ready"
        assert executor.max_workers == 1
        cluster.scale(2)
        client.wait_for_workers(2, timeout=BOUND)
        _wait_until(lambda: executor.max_workers == 2, "the executor to see 2 workers")

        def pid_and_init() -> tuple[int, Any]:
            time.sleep(0.1)
            return os.getpid(), tasks.read_init()

        outcomes = [
            f.result(timeout=BOUND)
            for f in [executor.submit(pid_and_init) for _ in range(12)]
        ]
        assert {init for _, init in outcomes} == {"ready"}
        assert len({pid for pid, _ in outcomes}) == 2
        executor.shutdown()
    finally:
        client.close()
        cluster.close()


def test_a_worker_joining_with_a_failing_initializer_breaks_it(tmp_path: Path) -> None:
    refuse = tmp_path / "refuse"

    def init(path: str) -> None:
        if os.path.exists(path):
            raise RuntimeError("the late worker refuses")

    cluster = _local_cluster(1, tmp_path)
    client = distributed.Client(cluster, set_as_default=False)
    try:
        executor = executors.create(
            "dask", client=client, initializer=init, initargs=(str(refuse),)
        )
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        refuse.touch()
        cluster.scale(2)
        client.wait_for_workers(2, timeout=BOUND)
        deadline = time.monotonic() + BOUND
        with pytest.raises(InitializerFailedError, match="the late worker refuses"):
            while time.monotonic() < deadline:
                batch = [
                    executor.submit(tasks.sleep_and_return, 0.05) for _ in range(4)
                ]
                for fut in batch:
                    fut.result(timeout=BOUND)
        with pytest.raises(InitializerFailedError):
            executor.submit(tasks.add, 1, 1)
        executor.shutdown()
        assert not [
            name
            for name in cluster.scheduler.worker_plugins
            if name.startswith("executors-initializer-")
        ]
    finally:
        client.close()
        cluster.close()


def test_a_failing_initializer_breaks_it_and_closes_the_cluster() -> None:
    before = child_processes()
    executor = _create(initializer=tasks.failing_init)
    with pytest.raises(InitializerFailedError, match="initializer failed on purpose"):
        executor.submit(tasks.identity, 1).result(timeout=BOUND)
    with pytest.raises(InitializerFailedError):
        executor.submit(tasks.identity, 2)
    assert not wait_for_no_new_children(before)
    executor.shutdown()


# -- shutdown and what it leaves -------------------------------------------------


@pytest.mark.slow
def test_shutdown_leaves_no_process_thread_or_socket() -> None:
    before = child_processes()
    threads = _our_threads()
    sockets = _listening()
    executor = _create()
    futures = [executor.submit(tasks.sleep_and_return, 1.0, i) for i in range(4)]
    ours = _listening() - sockets
    assert ours, "the local cluster listens on no port"
    assert {ip for ip, _ in ours} == {"127.0.0.1"}
    executor.shutdown(wait=False)
    assert not any(f.done() for f in futures), "shutdown(wait=False) waited"
    assert [f.result(timeout=BOUND) for f in futures] == [0, 1, 2, 3]
    executor.shutdown(wait=True)
    assert not wait_for_no_new_children(before)
    assert _our_threads() == threads
    assert not (_listening() - sockets)


def test_shutdown_cancels_only_what_dask_has_not_seen() -> None:
    executor = _create()
    running = [executor.submit(tasks.sleep_and_return, 0.5, i) for i in range(2)]
    _wait_until(lambda: all(f.running() for f in running), "the first tasks to run")
    queued = [executor.submit(tasks.identity, i) for i in range(5)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert [f.result(timeout=0) for f in running] == [0, 1]
    assert all(f.cancelled() for f in queued)


def test_shutdown_during_the_first_submit_closes_the_new_cluster() -> None:
    before = child_processes()
    executor = _create()
    outcome: list[Any] = []

    def first_submit() -> None:
        try:
            outcome.append(executor.submit(tasks.add, 1, 2).result(timeout=BOUND))
        except RuntimeError as exc:
            outcome.append(exc)

    starter = threading.Thread(target=first_submit)
    starter.start()
    time.sleep(0.2)  # the cluster is starting
    starting = starter.is_alive()
    executor.shutdown(wait=False)
    if starting:
        assert starter.is_alive(), "shutdown(wait=False) waited for the start"
    starter.join(BOUND)
    # The submit either won the race or was refused; nothing is left over.
    assert outcome == [3] or "after shutdown" in str(outcome[0])
    executor.shutdown(wait=True)
    assert not wait_for_no_new_children(before)


def test_a_dropped_executor_closes_its_cluster() -> None:
    before = child_processes()
    executor = _create()
    fut: Future[Any] = executor.submit(tasks.add, 2, 3)
    assert fut.result(timeout=BOUND) == 5
    del executor
    gc.collect()
    assert not wait_for_no_new_children(before)
    _wait_until(
        lambda: (
            not any(t.name == "executors-dask-manager" for t in threading.enumerate())
        ),
        "the manager thread to end",
    )


@pytest.mark.slow
def test_the_default_start_method_works() -> None:
    with _create(max_workers=1, mp_context="spawn") as executor:
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3


# -- task control ------------------------------------------------------------------


@pytest.mark.slow  # over 10 s; the quick run keeps a sibling
@pytest.mark.timeout(90)
def test_a_timed_out_task_is_stopped_and_never_run_again(tmp_path: Path) -> None:
    # Functions of executors.testing: a test module's own would be pickled
    # by value, and unpickling it imports pytest in each worker (0.5 s).
    finished = tmp_path / "finished"
    # The timeout on this task only: the quick ones around it must not
    # depend on the machine's speed.
    slow = with_options(tasks.touch_after, timeout=2)
    with _create() as executor:
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        start = time.monotonic()
        # Three times its timeout: stopped well before it would have ended.
        fut = executor.submit(slow, str(finished), 6.0)
        with pytest.raises(TaskTimeoutError, match="stopped and its worker replaced"):
            fut.result(timeout=BOUND)
        assert time.monotonic() - start < 6.0
        # The executor serves the next task at once, on the other worker.
        assert executor.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4
        # Dask retries a task whose worker died; a stopped one must not be:
        # run again, it would touch the file 6 s later.
        time.sleep(8.0)
        assert not finished.exists()
        assert executor.submit(tasks.add, 3, 3).result(timeout=BOUND) == 6


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_kill_task_stops_one_task_and_the_executor_lives_on(tmp_path: Path) -> None:
    finished = tmp_path / "finished"
    with _create() as executor:
        other = executor.submit(tasks.sleep_and_return, 1.0, "other")
        target = executor.submit(tasks.touch_after, str(finished), 3.0)
        _wait_until(target.running, "the task to run")
        start = time.monotonic()
        assert executor.kill_task(target)
        with pytest.raises(TaskKilledError):
            target.result(timeout=BOUND)
        assert other.result(timeout=BOUND) == "other"
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3
        assert not executor.kill_task(other), "a finished task cannot be killed"
        time.sleep(max(0.0, start + 5.0 - time.monotonic()))
        assert not finished.exists(), "the killed task ran to its end"


def test_a_listed_exception_is_retried(tmp_path: Path) -> None:
    with _create() as executor:
        fn = with_options(tasks.fail_first, retries=2, retry_on=tasks.Flaky)
        assert executor.submit(fn, str(tmp_path / "once"), "ok").result(BOUND) == "ok"


@pytest.mark.timeout(90)
def test_terminate_workers_resolves_every_future_and_leaves_no_process() -> None:
    before = child_processes()
    executor = _create()
    running = [executor.submit(tasks.sleep_and_return, 60.0, i) for i in range(2)]
    queued = [executor.submit(tasks.identity, i) for i in range(3)]
    _wait_until(lambda: all(f.running() for f in running), "the tasks to run")
    start = time.monotonic()
    executor.terminate_workers()
    assert time.monotonic() - start < BOUND
    for fut in running:
        assert isinstance(fut.exception(timeout=0), WorkersTerminatedError)
    assert all(f.cancelled() for f in queued)
    assert not wait_for_no_new_children(before)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_with_a_client_a_timed_out_task_is_abandoned(shared_client: Any) -> None:
    # Another's cluster: its workers are not ours to kill.
    with executors.create("dask", client=shared_client, task_timeout=0.5) as executor:
        fut = executor.submit(tasks.sleep_and_return, 2.0, "late")
        with pytest.raises(TaskTimeoutError, match="abandoned"):
            fut.result(timeout=BOUND)
        blocker = executor.submit(with_options(tasks.sleep_and_return, timeout=30), 2.0)
        _wait_until(blocker.running, "the task to run")
        assert not executor.kill_task(blocker)
        assert blocker.result(timeout=BOUND) is None


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_our_scheduler_gives_up_on_a_dead_workers_address_in_seconds() -> None:
    # The scheduler fetches a finished result from its worker. Fetched from
    # a worker that has just died, it retried the connection for Dask's
    # 30 s connect timeout, and the future waited as long although the
    # result had been computed again elsewhere (a race of the fault suite
    # when a crashing task took both workers down).
    import asyncio

    with _create() as executor:
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        cluster = executor._dispatch.runtime.cluster
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead = f"tls://127.0.0.1:{probe.getsockname()[1]}"  # nobody listens
        pending = asyncio.run_coroutine_threadsafe(
            cluster.scheduler.rpc.connect(dead), cluster.loop.asyncio_loop
        )
        start = time.monotonic()
        with pytest.raises(OSError):
            pending.result(timeout=40)
        assert time.monotonic() - start < 15
