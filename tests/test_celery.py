"""The ``celery`` backend beyond the shared contract: its private deployment.

``tests/test_celery_conformance.py`` runs the suites; here, what only this
backend promises: options that cannot apply to an existing deployment are
refused by name, ``create()`` starts nothing, ``shutdown()`` stops the Redis
server and the worker it started (and removes its folder), the deployment
is private (no TCP port, a 0700 socket, a password), Ctrl-C stops the
workers at once, a pool process killed mid-task fails that task alone, and
a Redis server that dies breaks the executor within a bound.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import BrokenExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

import executors
from executors import ExecutorFailedError, WorkerCrashedError
from executors.testing import BOUND, child_processes, tasks, wait_for_no_new_children

pytest.importorskip("celery")

from executors.backends.celery._executor import CeleryExecutor


def _create(**options: Any) -> CeleryExecutor:
    executor = executors.create("celery", **{"max_workers": 2, **options})
    assert isinstance(executor, CeleryExecutor)
    return executor


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_workers": 0}, ValueError, "max_workers must be greater than 0"),
        (
            {"broker": "redis://x", "initializer": tasks.noop},
            TypeError,
            "'initializer'",
        ),
        ({"broker": "redis://x", "initargs": (1,)}, TypeError, "'initargs'"),
        (
            {"broker": "redis://x", "max_tasks_per_child": 2},
            TypeError,
            "'max_tasks_per_child'",
        ),
        ({"queue": "q"}, TypeError, "'queue'"),
        ({"app": "not an app"}, TypeError, "celery.Celery"),
        ({"broker": 5}, TypeError, "broker"),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child"),
        ({"initializer": 3}, TypeError, "initializer"),
    ],
)
def test_bad_options_raise_at_create(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        executors.create("celery", **options)


def test_app_and_broker_are_exclusive() -> None:
    from celery import Celery

    app = Celery(set_as_current=False)
    with pytest.raises(ValueError, match="not both"):
        executors.create("celery", app=app, broker="redis://127.0.0.1:1")


def test_import_executors_imports_no_celery() -> None:
    code = (
        "import sys, executors; executors.create; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in {'celery', 'kombu', 'redis', 'billiard'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.timeout(60)
def test_private_deployment_starts_lazily_and_stops_everything() -> None:
    before = child_processes()
    executor = _create()
    assert child_processes() == before, "create() started processes"
    pids = executor.map(tasks.sleep_then_pid, [0.3, 0.3])
    workers = set(pids)
    assert len(workers) == 2 and os.getpid() not in workers
    deployment = executor._deployment
    assert deployment is not None
    assert deployment.redis is not None and deployment.worker is not None
    folder = Path(deployment.url.rpartition("@")[2]).parent
    # Private: a 0700 folder, a unix socket and no TCP port.
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    redis = psutil.Process(deployment.redis.pid)
    assert not [c for c in redis.net_connections(kind="inet") if c.status == "LISTEN"]
    assert "requirepass" not in " ".join(redis.cmdline())
    executor.shutdown()
    assert not folder.exists()
    assert not wait_for_no_new_children(before), "processes left after shutdown"


@pytest.mark.timeout(60)
def test_pool_process_killed_mid_task_fails_that_task_alone(tmp_path: Path) -> None:
    with _create() as executor:
        pidfile = tmp_path / "pid"
        victim = executor.submit(tasks.write_pid_then_sleep, str(pidfile), 5.0, "x")
        other = executor.submit(tasks.sleep_and_return, 1.0, "other")
        deadline = time.monotonic() + BOUND
        while not pidfile.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        error = victim.exception(timeout=BOUND)
        assert isinstance(error, WorkerCrashedError)
        assert error.exitcode == -signal.SIGKILL
        assert "SIGKILL" in str(error)
        assert other.result(timeout=BOUND) == "other"
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3


@pytest.mark.timeout(60)
def test_redis_that_dies_breaks_the_executor_within_the_bound() -> None:
    before = child_processes()
    executor = _create()
    assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
    running = executor.submit(tasks.sleep_and_return, 30.0, "never")
    deployment = executor._deployment
    assert deployment is not None and deployment.redis is not None
    start = time.monotonic()
    deployment.redis.kill()
    error = running.exception(timeout=BOUND)
    took = time.monotonic() - start
    assert isinstance(error, ExecutorFailedError), repr(error)
    assert took < 10.0
    with pytest.raises(BrokenExecutor):
        executor.submit(tasks.add, 1, 1)
    executor.shutdown()
    assert not wait_for_no_new_children(before)


@pytest.mark.timeout(60)
def test_ctrl_c_kills_the_workers_at_once() -> None:
    before = child_processes()
    with pytest.raises(KeyboardInterrupt):
        with _create() as executor:
            running = [
                executor.submit(tasks.sleep_and_return, 30.0, i) for i in range(2)
            ]
            queued = [executor.submit(tasks.identity, i) for i in range(5)]
            deadline = time.monotonic() + BOUND
            while not all(f.running() for f in running):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            start = time.monotonic()
            raise KeyboardInterrupt
    assert time.monotonic() - start < 5.0
    assert all(
        isinstance(f.exception(), executors.ExecutorInterruptedError) for f in running
    )
    assert all(f.cancelled() for f in queued)
    assert not wait_for_no_new_children(before)


@pytest.mark.timeout(60)
def test_max_tasks_per_child_replaces_pool_processes() -> None:
    with _create(max_workers=1, max_tasks_per_child=2) as executor:
        pids = [
            executor.submit(tasks.sleep_then_pid, 0.0).result(timeout=BOUND)
            for _ in range(6)
        ]
    assert len(set(pids)) == 3, pids
