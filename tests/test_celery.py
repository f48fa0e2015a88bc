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
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import BrokenExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

import executors
from conftest import (
    interrupt_a_busy_with_block,
    kill_the_process_of_a_running_task,
    wait_until_running,
)
from executors import ExecutorFailedError, WorkerCrashedError
from executors._capabilities import WORKER_FLAGS
from executors.testing import BOUND, child_processes, tasks, wait_for_no_new_children

pytest.importorskip("celery")

from executors.backends.celery._executor import CeleryExecutor

# The executors the running test made: killed at its end, failed or not.
_made: list[CeleryExecutor] = []


def _create(**options: Any) -> CeleryExecutor:
    executor = executors.create("celery", **{"max_workers": 2, **options})
    assert isinstance(executor, CeleryExecutor)
    _made.append(executor)
    return executor


def _own_folders() -> set[Path]:
    """The private folders this process's deployments made."""
    return set(Path(tempfile.gettempdir()).glob(f"executors-celery-{os.getpid()}-*"))


@pytest.fixture(autouse=True)
def _nothing_left() -> Iterator[None]:
    """Every deployment a test started is stopped, its folder removed, even
    when the test failed halfway (a full run once left a folder behind)."""
    before = _own_folders()
    try:
        yield
    finally:
        made = list(_made)
        _made.clear()
        for executor in made:
            executor.kill_workers()
    deadline = time.monotonic() + BOUND
    while left := _own_folders() - before:
        assert time.monotonic() < deadline, f"folders left behind: {left}"
        time.sleep(0.05)


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
        ({"broker": "spawn"}, ValueError, "broker must be a URL"),
        ({"broker": "redis://x", "backend": ""}, ValueError, "backend must be a URL"),
        ({"backend": "redis://x"}, ValueError, "needs broker="),
        ({"broker": "redis://x", "queue": ""}, ValueError, "queue must be"),
        ({"app": "not an app"}, TypeError, "celery.Celery"),
        ({"broker": 5}, TypeError, "broker"),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child"),
        ({"initializer": 3}, TypeError, "initializer"),
        ({"broker": "redis://x", "finalizer": print}, TypeError, "'finalizer'"),
        ({"broker": "redis://x", "finalargs": (1,)}, TypeError, "'finalargs'"),
        (
            {"broker": "redis://x", "threads_per_worker": 1},
            TypeError,
            "'threads_per_worker'",
        ),
        (
            {"broker": "redis://x", "max_memory_per_child": "1GB"},
            TypeError,
            "'max_memory_per_child'",
        ),
        ({"finalizer": 3}, TypeError, "finalizer must be callable"),
        ({"max_memory_per_child": "lots"}, ValueError, "max_memory_per_child"),
        ({"threads_per_worker": 0}, ValueError, "threads_per_worker"),
        ({"forward_logs": "yes"}, TypeError, "forward_logs"),
    ],
)
def test_bad_options_raise_at_create(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        executors.create("celery", **options)


def test_an_existing_deployment_declares_no_worker_flags() -> None:
    """Its workers are not this process's: no slot, listener or hook of ours."""
    private = CeleryExecutor.capabilities
    existing = executors.create("celery", broker="redis://127.0.0.1:1", max_workers=2)
    try:
        for flag in WORKER_FLAGS:
            assert getattr(private, flag), flag
            assert not getattr(existing.capabilities, flag), flag
        assert existing.capabilities.kills_single_task
    finally:
        existing.shutdown(wait=True)


def test_recycling_maps_to_celerys_own_options() -> None:
    """max_memory_per_child is Celery's --max-memory-per-child, in KiB."""
    from executors.backends.celery._deployment import LocalDeployment

    command = LocalDeployment(
        2, max_tasks_per_child=25, max_memory_per_child=150 * 10**6
    )._worker_command()
    assert "--max-tasks-per-child=25" in command
    assert f"--max-memory-per-child={150 * 10**6 // 1024}" in command
    assert not any("max-memory" in arg for arg in LocalDeployment(2)._worker_command())


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


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_pool_process_killed_mid_task_fails_that_task_alone(tmp_path: Path) -> None:
    with _create() as executor:
        error = kill_the_process_of_a_running_task(executor, tmp_path)
        assert error.exitcode == -signal.SIGKILL
        assert "SIGKILL" in str(error)


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
    running, queued, took = interrupt_a_busy_with_block(_create(), 2, 5)
    assert took < 5.0
    assert all(
        isinstance(f.exception(), executors.ExecutorInterruptedError) for f in running
    )
    # Queued work is cancelled before the running calls fail: their freed
    # window slots must not launch it into the worker about to be killed.
    states = [
        "cancelled" if f.cancelled() else repr(f.exception() or f.result())
        for f in queued
    ]
    assert states == ["cancelled"] * len(queued)
    assert not wait_for_no_new_children(before)


@pytest.mark.slow  # over 10 s; the quick run keeps a sibling
@pytest.mark.timeout(60)
def test_max_tasks_per_child_replaces_pool_processes() -> None:
    with _create(max_workers=1, max_tasks_per_child=2) as executor:
        pids = [
            executor.submit(tasks.sleep_then_pid, 0.0).result(timeout=BOUND)
            for _ in range(6)
        ]
    assert len(set(pids)) == 3, pids


# -- task control on the private deployment ------------------------------------


def _wait_for_pid(path: Path) -> int:
    deadline = time.monotonic() + BOUND
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.01)
    return int(path.read_text())


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_kill_task_kills_its_pool_process_and_the_worker_replaces_it(
    tmp_path: Path,
) -> None:
    with _create() as executor:
        pidfile = tmp_path / "pid"
        victim = executor.submit(tasks.write_pid_then_sleep, str(pidfile), 30.0)
        other = executor.submit(tasks.sleep_and_return, 1.0, "other")
        pid = _wait_for_pid(pidfile)
        assert executor.kill_task(victim) is True
        with pytest.raises(executors.TaskKilledError):
            victim.result(timeout=BOUND)
        deadline = time.monotonic() + BOUND
        while not _gone(pid):
            assert time.monotonic() < deadline, "the pool process still runs"
            time.sleep(0.02)
        assert other.result(timeout=BOUND) == "other"
        # Two pool processes again, the killed one replaced. The new one may
        # still be starting on a loaded machine: meanwhile the other process
        # takes both tasks, so look again until both answer.
        pids: set[int] = set()
        deadline = time.monotonic() + BOUND
        while len(pids) < 2:
            assert time.monotonic() < deadline, f"one pool process only: {pids}"
            pids = set(executor.map(tasks.sleep_then_pid, [0.3, 0.3], timeout=BOUND))
            assert pid not in pids
        assert executor.kill_task(other) is False  # done: nothing to stop


@pytest.mark.timeout(60)
def test_a_timed_out_task_is_stopped_and_retried_on_a_new_process(
    tmp_path: Path,
) -> None:
    with _create() as executor:
        pidfile = tmp_path / "pid"
        limited = executors.with_options(tasks.write_pid_then_sleep, timeout=0.5)
        slow = executor.submit(limited, str(pidfile), 30.0)
        with pytest.raises(executors.TaskTimeoutError, match="stopped"):
            slow.result(timeout=BOUND)
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + BOUND
        while not _gone(pid):
            assert time.monotonic() < deadline, "the timed-out task still runs"
            time.sleep(0.02)
        # A pool process that dies costs an attempt: Celery replaced it.
        retried = executors.with_options(tasks.die_first, retries=1)
        marker = str(tmp_path / "once")
        assert executor.submit(retried, marker, "ok").result(timeout=BOUND) == "ok"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
def test_terminate_workers_stops_the_private_deployment(how: str) -> None:
    before = child_processes()
    executor = _create()
    running = [executor.submit(tasks.sleep_and_return, 30.0, i) for i in range(2)]
    queued = [executor.submit(tasks.identity, i) for i in range(3)]
    wait_until_running(running)
    deployment = executor._deployment
    assert deployment is not None and deployment.worker is not None
    group = deployment.worker.pid
    folder = Path(deployment.url.rpartition("@")[2]).parent
    start = time.monotonic()
    getattr(executor, how)()
    assert time.monotonic() - start < 5.0
    for fut in running:
        assert isinstance(fut.exception(timeout=0), executors.WorkersTerminatedError)
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(tasks.add, 1, 1)
    assert not folder.exists()
    # The worker's main and pool processes (its process group) are gone,
    # those re-parented to init included.
    deadline = time.monotonic() + BOUND
    while left := _in_group(group):
        assert time.monotonic() < deadline, f"left running: {left}"
        time.sleep(0.05)
    assert not wait_for_no_new_children(before)


def _in_group(pgid: int) -> list[int]:
    left = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return left


def test_a_task_terminated_by_someone_elses_revoke_counts_as_a_crash() -> None:
    # Retried like a dead pool process (retries_crashes); any other REVOKED
    # is Celery refusing the task.
    from celery.exceptions import TaskRevokedError

    from executors.backends.celery._celeryside import failure

    crash = failure("REVOKED", TaskRevokedError("terminated"))
    assert isinstance(crash, WorkerCrashedError)
    assert isinstance(crash.__cause__, TaskRevokedError)
    assert isinstance(
        failure("REVOKED", TaskRevokedError("revoked")), ExecutorFailedError
    )


def exit_after_closing_pipes() -> None:
    """Die the way that raced Celery's pool: pipes closed, then an exit.

    A dying process closes its pipes (its sentinel among them) before its
    exit status can be read; here the gap is stretched to a moment.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            with open(f"/proc/self/fdinfo/{fd}") as info:
                flags = int(info.read().split("flags:")[1].split()[0], 8)
        except (OSError, IndexError, ValueError):
            continue
        if target.startswith("pipe:") and flags & os.O_ACCMODE == os.O_WRONLY:
            os.close(fd)
    time.sleep(0.3)
    os._exit(3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(60)
def test_a_pool_process_that_dies_slowly_is_noticed_at_once() -> None:
    # Celery's pool looks for dead processes as a sentinel closes and then
    # every 5 s; a process not yet reapable at the first look was found up
    # to 5 s later. The second crash starts just after the pool's look that
    # found the first, so it would wait for almost the whole period.
    with _create() as executor:
        for _ in range(2):
            start = time.monotonic()
            error = executor.submit(exit_after_closing_pipes).exception(timeout=BOUND)
            took = time.monotonic() - start
            assert isinstance(error, WorkerCrashedError), repr(error)
            assert error.exitcode == 3
        assert took < 2.0, f"the second crash was reported after {took:.1f}s"
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2


@pytest.mark.timeout(60)
def test_the_result_thread_never_closes_the_stop_message_mid_send() -> None:
    # shutdown() wakes the result thread with a message it publishes on a
    # connection of the client's pool; the thread, seeing the stop flag,
    # disconnected the whole pool as it ended, that connection included,
    # and the publish then waited out the 5 s socket timeout (1 shutdown
    # in 15 on a busy machine). Here the publish is held for longer than
    # the thread's read timeout, so the thread sees the flag meanwhile.
    executor = _create()
    assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
    listener = executor._connection._listener
    assert listener is not None
    pool = listener._client.connection_pool
    events: list[str] = []
    real_publish, real_disconnect = listener._client.publish, pool.disconnect

    def publish(*args: Any, **kwargs: Any) -> Any:
        events.append("publish starts")
        time.sleep(1.5)  # longer than the thread's 1 s read
        try:
            return real_publish(*args, **kwargs)
        finally:
            events.append("publish ends")

    def disconnect(*args: Any, **kwargs: Any) -> Any:
        events.append("pool disconnected")
        return real_disconnect(*args, **kwargs)

    listener._client.publish = publish
    pool.disconnect = disconnect
    start = time.monotonic()
    executor.shutdown()
    assert events[:3] == ["publish starts", "publish ends", "pool disconnected"]
    assert time.monotonic() - start < 4.0
