"""The ``dask`` backend on a real multi-process cluster, reached by address.

The test starts ``dask scheduler`` and two ``dask worker`` processes (each
with its nanny, as on a real cluster) on 127.0.0.1 with free ports, connects
with ``executors.create("dask", address=...)``, and checks that tasks ran in
those worker processes, that the initializer reaches a worker that joins
later, that a crashing task ends as ``WorkerCrashedError`` under the
scheduler's own ``allowed-failures``, and that shutdown closes only our
client. The module's fixture tears the cluster down.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import distributed
import psutil
import pytest

import executors
from _programs import ready_caller, wait_until_empty
from executors import WorkerCrashedError
from executors.testing import BOUND, child_processes, tasks, wait_for_no_new_children

pytestmark = pytest.mark.cluster

# Worker processes boot with spawn and import distributed: slow on a busy
# machine, so waiting for them gets more than one BOUND.
BOOT_BOUND = 4 * BOUND
# Set on the scheduler we start, the way an operator would: a task that
# kills a worker is tried twice in all (Dask's default is four times).
SCHEDULER_ENV = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dask(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dask", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            # A nanny that does not stop takes its worker down with it.
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait(BOUND)


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen[bytes]
    #: Where its processes keep their files: Dask's default would leave
    #: $TMPDIR/dask-scratch-space behind.
    env: dict[str, str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        proc = _dask(
            "worker",
            self.address,
            "--host",
            "127.0.0.1",
            "--nthreads",
            "1",
            "--name",
            name,
            "--no-dashboard",
            "--dashboard-address",
            "127.0.0.1:0",
            env=self.env,
        )
        self.workers.append(proc)
        return proc

    def worker_pids(self) -> set[int]:
        """The pids of the worker processes, which the nannies started."""
        pids = set()
        for proc in self.workers:
            try:
                nanny = psutil.Process(proc.pid)
                pids |= {child.pid for child in nanny.children(recursive=True)}
            except psutil.NoSuchProcess:
                continue
        return pids


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    before = child_processes()
    env = {"DASK_TEMPORARY_DIRECTORY": str(tmp_path_factory.mktemp("dask"))}
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = _dask(
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-dashboard",
        "--dashboard-address",
        "127.0.0.1:0",
        env={**SCHEDULER_ENV, **env},
    )
    running = Cluster(address, scheduler, env)
    try:
        running.start_worker("w0")
        running.start_worker("w1")
        with distributed.Client(
            address, timeout=BOOT_BOUND, set_as_default=False
        ) as client:
            client.wait_for_workers(2, timeout=BOOT_BOUND)
        yield running
    finally:
        for proc in [*running.workers, scheduler]:
            _stop(proc)
        leftover = wait_for_no_new_children(before)
        assert not leftover, f"cluster processes left: {sorted(leftover)}"


@pytest.fixture
def raw_client(cluster: Cluster) -> Iterator[Any]:
    with distributed.Client(
        cluster.address, timeout=BOUND, set_as_default=False
    ) as client:
        yield client


def _wait_for_workers(raw_client: Any, n: int) -> None:
    raw_client.wait_for_workers(n, timeout=BOOT_BOUND)


@pytest.mark.slow
def test_tasks_run_in_the_cluster_workers(cluster: Cluster) -> None:
    with executors.create("dask", address=cluster.address) as executor:
        assert executor.max_workers == 2
        pids = {
            f.result(timeout=BOUND)
            for f in [executor.submit(tasks.sleep_then_pid, 0.1) for _ in range(10)]
        }
        mapped = set(executor.map(tasks.get_pid, range(500), timeout=BOUND))
    workers = cluster.worker_pids()
    assert os.getpid() not in pids | mapped
    assert pids <= workers
    assert mapped <= workers
    assert len(pids) == 2, "both workers should have run tasks"


def test_shutdown_closes_only_our_client(cluster: Cluster, raw_client: Any) -> None:
    def client_count(dask_scheduler: Any) -> int:
        return len(dask_scheduler.clients)

    before = raw_client.run_on_scheduler(client_count)
    executor = executors.create("dask", address=cluster.address)
    assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3
    assert raw_client.run_on_scheduler(client_count) == before + 1
    executor.shutdown()
    deadline = time.monotonic() + BOUND
    while raw_client.run_on_scheduler(client_count) != before:
        assert time.monotonic() < deadline, "our client is still connected"
        time.sleep(0.05)
    # The cluster itself is untouched.
    assert len(raw_client.scheduler_info()["workers"]) == len(cluster.workers)
    assert raw_client.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4


@pytest.mark.slow
def test_initializer_reaches_a_worker_that_joins_later(
    cluster: Cluster, raw_client: Any
) -> None:
    def plugins(dask_scheduler: Any) -> list[str]:
        return list(dask_scheduler.worker_plugins)

    executor = executors.create(
        "dask",
        address=cluster.address,
        initializer=tasks.record_init,
        initargs=("ready",),
    )
    assert executor.submit(tasks.read_init).result(timeout=BOUND) == "ready"
    late = cluster.start_worker("late")
    try:
        _wait_for_workers(raw_client, 3)
        deadline = time.monotonic() + BOUND
        while executor.max_workers < 3:
            assert time.monotonic() < deadline, "the executor never saw 3 workers"
            time.sleep(0.05)

        def pid_and_init() -> tuple[int, Any]:
            time.sleep(0.2)
            return os.getpid(), tasks.read_init()

        outcomes = [
            f.result(timeout=BOUND)
            for f in [executor.submit(pid_and_init) for _ in range(15)]
        ]
        late_pids = {child.pid for child in psutil.Process(late.pid).children()}
        assert {init for _, init in outcomes} == {"ready"}
        assert late_pids & {pid for pid, _ in outcomes}, "the new worker ran nothing"
        executor.shutdown()
        # Workers that join after us must not run our initializer.
        assert not [
            name
            for name in raw_client.run_on_scheduler(plugins)
            if name.startswith("executors-initializer-")
        ]
    finally:
        _stop(late)
        cluster.workers.remove(late)
        executor.shutdown()


@pytest.mark.slow
def test_a_crashing_task_ends_as_worker_crashed_error(
    cluster: Cluster, raw_client: Any
) -> None:
    with executors.create("dask", address=cluster.address) as executor:
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        fut = executor.submit(tasks.exit_abruptly, 3)
        # Each death waits for a nanny to restart a worker.
        with pytest.raises(WorkerCrashedError, match="died 2 time"):
            fut.result(timeout=BOOT_BOUND)
        _wait_for_workers(raw_client, 2)
        assert executor.submit(tasks.add, 2, 2).result(timeout=BOOT_BOUND) == 4


# A caller that connects with an initializer, runs a task, and is killed.
KILLED_CALLER = """
import sys, time
import executors
from executors.testing import tasks

if __name__ == "__main__":
    executor = executors.create(
        "dask", address=sys.argv[1], initializer=tasks.record_init, initargs=("x",)
    )
    assert executor.submit(tasks.read_init).result(timeout=60) == "x"
    print("READY", flush=True)
    time.sleep(120)
"""


def _initializers(raw_client: Any) -> list[str]:
    def plugins(dask_scheduler: Any) -> list[str]:
        return [*dask_scheduler.worker_plugins, *dask_scheduler.plugins]

    found = raw_client.run_on_scheduler(plugins)
    return [name for name in found if name.startswith("executors-initializer-")]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_killed_caller_leaves_no_initializer_on_the_scheduler(
    cluster: Cluster, raw_client: Any, tmp_path: Any
) -> None:
    script = tmp_path / "killed_caller.py"
    script.write_text(KILLED_CALLER)
    with ready_caller(str(script), cluster.address) as caller:
        assert _initializers(raw_client), "the initializer was never registered"
        caller.proc.kill()  # no shutdown(), no exit hook
        caller.wait(BOUND)
        # The scheduler sees the client go once its connection closes.
        wait_until_empty(
            lambda: _initializers(raw_client), BOOT_BOUND, "left on the scheduler"
        )
