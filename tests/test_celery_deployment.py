"""The ``celery`` backend on an existing deployment it did not start.

The test plays the operator: it starts a Redis server (127.0.0.1, a free
port, a password) and two ``celery worker`` processes of the ready-made app
``executors.backends.celery.worker``, each its own process, then the
program connects with ``create("celery", broker=..., backend=...)``. Tasks
run in those workers' pool processes; a pool process killed mid-task fails
that task alone; a broker that stops breaks the executor within a bound.
Every process is stopped at the end, the pool processes too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import BrokenExecutor
from pathlib import Path

import psutil
import pytest

import executors
from conftest import kill_the_process_of_a_running_task
from executors import ExecutorFailedError
from executors.testing import BOUND, tasks

pytest.importorskip("celery")

from executors.backends.celery._redisserver import redis_server_binary

#: Starting Redis and two workers (a loaded CI machine is slow).
START_SECONDS = 60.0
# Settings of the operator's workers: a lost pool process is reported after
# 1 s instead of Celery's 10 s.
WORKER_SETTINGS = "worker_lost_wait = 1.0\nworker_prefetch_multiplier = 1\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Deployment:
    """A Redis server and two Celery workers, each a separate process."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        password = secrets.token_hex(16)
        self.port = _free_port()
        self.url = f"redis://:{password}@127.0.0.1:{self.port}/0"
        config = f'port {self.port}\nbind 127.0.0.1\nrequirepass {password}\nsave ""\n'
        self.redis = subprocess.Popen(
            [redis_server_binary(), "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self.redis.stdin is not None
        self.redis.stdin.write(config.encode())
        self.redis.stdin.close()
        (folder / "operator_settings.py").write_text(WORKER_SETTINGS)
        env = {
            **os.environ,
            "CELERY_BROKER_URL": self.url,
            "CELERY_RESULT_BACKEND": self.url,
            "CELERY_CONFIG_MODULE": "operator_settings",
            "PYTHONPATH": os.pathsep.join(
                [str(folder), os.environ.get("PYTHONPATH", "")]
            ),
        }
        self.workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-W",
                    "ignore::UserWarning:celery.platforms",
                    "-m",
                    "celery",
                    "-A",
                    "executors.backends.celery.worker",
                    "-q",
                    "worker",
                    "--concurrency=1",
                    "--without-heartbeat",
                    "--without-gossip",
                    "--without-mingle",
                    "--loglevel=WARNING",
                    "-n",
                    f"operator{i}-{secrets.token_hex(3)}@%h",
                ],
                env=env,
                start_new_session=True,
            )
            for i in range(2)
        ]

    def wait_ready(self) -> None:
        from celery import Celery

        app = Celery(set_as_current=False, broker=self.url, backend=self.url)
        deadline = time.monotonic() + START_SECONDS
        try:
            while len(app.control.ping(timeout=0.5)) < 2:
                assert time.monotonic() < deadline, "the workers never answered"
                assert all(w.poll() is None for w in self.workers), "a worker died"
        finally:
            app.close()

    def pool_pids(self) -> set[int]:
        return {
            child.pid
            for worker in self.workers
            for child in psutil.Process(worker.pid).children()
        }

    def stop_broker(self) -> None:
        self.redis.kill()
        self.redis.wait()

    def stop(self) -> None:
        """Stop every process: the workers' whole groups (pool processes too)."""
        groups = [w.pid for w in self.workers] + [self.redis.pid]
        for pgid in groups:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        for proc in [*self.workers, self.redis]:
            proc.wait(timeout=BOUND)
        # Re-parented pool processes are gone too.
        deadline = time.monotonic() + BOUND
        while _in_groups(groups):
            assert time.monotonic() < deadline, f"left running: {_in_groups(groups)}"
            time.sleep(0.05)


def _in_groups(groups: list[int]) -> list[int]:
    left = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) in groups and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc.pid)
    return left


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    started = Deployment(tmp_path_factory.mktemp("celery-operator"))
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_tasks_run_in_the_deployments_workers(deployment: Deployment) -> None:
    with executors.create(
        "celery", broker=deployment.url, backend=deployment.url
    ) as ex:
        # Two slots found by asking the workers: both run at once.
        assert ex.max_workers == 2
        pids = set(ex.map(tasks.sleep_then_pid, [0.5] * 2, timeout=BOUND))
        assert pids == deployment.pool_pids()
        assert list(ex.map(lambda x: x * 2, range(50))) == [x * 2 for x in range(50)]
    # The executor deletes the results it read: no litter in Redis.
    import redis

    client = redis.Redis.from_url(deployment.url)
    try:
        assert not client.keys("celery-task-meta-*")
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_killed_pool_process_fails_only_its_task(
    deployment: Deployment, tmp_path: Path
) -> None:
    with executors.create(
        "celery", broker=deployment.url, backend=deployment.url, max_workers=2
    ) as ex:
        kill_the_process_of_a_running_task(ex, tmp_path, other_seconds=1.5)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stopped_broker_breaks_the_executor_within_the_bound(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    try:
        deployment.wait_ready()
        ex = executors.create(
            "celery", broker=deployment.url, backend=deployment.url, max_workers=2
        )
        assert ex.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        running = ex.submit(tasks.sleep_and_return, 30.0, "never")
        start = time.monotonic()
        deployment.stop_broker()
        error = running.exception(timeout=BOUND)
        assert isinstance(error, ExecutorFailedError), repr(error)
        assert time.monotonic() - start < 10.0
        with pytest.raises(BrokenExecutor):
            ex.submit(tasks.add, 1, 1)
        ex.shutdown()
    finally:
        deployment.stop()
