"""Runs the shipped conformance suite over every registered backend.

A backend whose extra is not installed shows up as *skipped*, with the pip
line that would install it.

It also checks that **no process of ours outlives the run**. The per-test
check of ``executors.testing`` sees only children; a worker re-parented to
init escapes it. So the controller puts a per-run token in the environment
(:data:`RUN_TOKEN_VARIABLE`) before anything starts, every process started
under the session inherits it (xdist workers, pools, fork servers, resource
trackers, Dask nannies, the programs the fault tests run), and at the end
the controller finds every process still carrying it, waits
:data:`ORPHAN_GRACE` seconds, kills the survivors and fails the session
with their list.

And that **no file of ours outlives the run**: the controller notes the
``executors-*`` folders in :func:`tempfile.gettempdir` (and Dask's default
``dask-scratch-space``) and the entries of
``/dev/shm`` (shared memory segments, ``sem.mp-*`` semaphores) at the start;
at the end, an entry that appeared meanwhile, that no live process holds
open or mapped and whose name does not carry a live process's pid, is a
leftover once :data:`LEFTOVER_GRACE` seconds have passed (resource trackers
unlink what their processes left as they end). Leftovers fail the session
with their list, and are removed. While another test run is alive on the
machine (a process with another run token that is not an ancestor's, or a
resource tracker of another program), a new entry may be its: the entries
are then listed as a warning, neither counted nor removed. A run alone on
the machine, as in CI, is checked exactly.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

import executors
from _programs import wait_until_empty
from executors import WorkerCrashedError, _registry
from executors.testing import BOUND, tasks
from executors.testing._support import wait_for_file

# Options each backend is tested with, beyond what a test passes itself.
# Two workers: this is a 2-core machine, and two is the smallest pool in
# which one worker can be busy while another is free.
TEST_OPTIONS: dict[str, dict[str, Any]] = {
    "inline": {},
    # Workers forked from a warm forkserver start in a fraction of spawn's
    # time; the suite starts a fresh cluster for most of its tests.
    "dask": {"max_workers": 2, "mp_context": "forkserver"},
}
DEFAULT_TEST_OPTIONS: dict[str, Any] = {"max_workers": 2}

BACKENDS = list(_registry._BUILTINS)


def backend_factory(name: str) -> Callable[..., Any]:
    """Return a factory for ``name``, or skip the test if it cannot load."""
    try:
        _registry.backend_class(name)
    except ImportError as exc:
        pytest.skip(f"backend {name!r} is not available: {exc}")
    defaults = TEST_OPTIONS.get(name, DEFAULT_TEST_OPTIONS)

    def make(**options: Any) -> Any:
        return executors.create(name, **{**defaults, **options})

    return make


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def executor_factory(backend_name: str) -> Callable[..., Any]:
    return backend_factory(backend_name)


# -- helpers the test modules import ------------------------------------------


def wait_until(
    predicate: Callable[[], object], what: str, bound: float = BOUND
) -> None:
    """Wait until ``predicate()`` is true; fail the test after ``bound`` s."""
    deadline = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def wait_until_running(futures: Iterable[Future[Any]]) -> None:
    """Wait until every one of ``futures`` runs; fail the test after BOUND s."""
    futures = list(futures)
    wait_until(lambda: all(f.running() for f in futures), "the tasks to run")


def interrupt_a_busy_with_block(
    executor: Any, running: int, queued: int
) -> tuple[list[Future[Any]], list[Future[Any]], float]:
    """Ctrl-C in ``with executor:`` once ``running`` 30 s tasks run, with
    ``queued`` more behind them. Their futures, and the seconds from the
    KeyboardInterrupt to the end of the with block."""
    with pytest.raises(KeyboardInterrupt), executor:
        started = [
            executor.submit(tasks.sleep_and_return, 30, i) for i in range(running)
        ]
        waiting = [executor.submit(tasks.identity, i) for i in range(queued)]
        wait_until_running(started)
        start = time.monotonic()
        raise KeyboardInterrupt
    return started, waiting, time.monotonic() - start


def celery_folders() -> set[Path]:
    """The private folders this process's Celery deployments made."""
    return set(Path(tempfile.gettempdir()).glob(f"executors-celery-{os.getpid()}-*"))


@pytest.fixture
def no_celery_folder_left() -> Generator[None, None, None]:
    """No private Celery deployment a test made outlives it, failed or not."""
    before = celery_folders()
    yield
    wait_until_empty(lambda: celery_folders() - before, BOUND, "folders left behind")


def kill_the_process_of_a_running_task(
    executor: Any, tmp_path: Path, other_seconds: float = 1.0
) -> WorkerCrashedError:
    """SIGKILL the worker process running one task while another task runs:
    check that only that task fails, with WorkerCrashedError, and that the
    executor runs a new task. That task's exception, for more checks."""
    pidfile = tmp_path / "pid"
    victim = executor.submit(tasks.write_pid_then_sleep, str(pidfile), 5.0, "x")
    other = executor.submit(tasks.sleep_and_return, other_seconds, "other")
    os.kill(int(wait_for_file(pidfile)), signal.SIGKILL)
    error = victim.exception(timeout=BOUND)
    assert isinstance(error, WorkerCrashedError), repr(error)
    assert other.result(timeout=BOUND) == "other"
    assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3
    return error


# -- no process of the run survives it ----------------------------------------

#: The environment variable that marks every process started by this run.
RUN_TOKEN_VARIABLE = "EXECUTORS_TEST_RUN"
#: Seconds the processes of the run get to end after the last test (xdist
#: workers and their fork servers are still exiting).
ORPHAN_GRACE = 5.0
# multiprocessing's helpers of the controller itself (tests run in it
# without xdist): they end with it, as in any program, so they are not
# leftovers while it is still running.
_OWN_HELPERS = (
    "multiprocessing.forkserver",
    "multiprocessing.resource_tracker",
    "loky.backend.resource_tracker",
)
_token_key = pytest.StashKey[str]()
_T = TypeVar("_T")


# Backends whose conformance and fault suites run in a module of their own,
# on one deployment the module shares (a Celery deployment takes a second
# to start; one per test would cost minutes): that module inherits the
# same behaviour classes.
SHARED_DEPLOYMENT_SUITES = {
    "celery": (
        "test_conformance.py",
        "test_faults.py",
        "test_pool.py",
        "test_backpressure.py",
    )
}


#: Examples each hypothesis test of executors.testing draws in the quick
#: run (``-m "not slow"``); its full count runs under ``-m slow``.
QUICK_EXAMPLES = 5


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hypothesis_examples" in metafunc.fixturenames:
        metafunc.parametrize(
            "hypothesis_examples",
            [
                pytest.param(QUICK_EXAMPLES, id="quick"),
                pytest.param(None, id="full", marks=pytest.mark.slow),
            ],
        )


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    kept = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend_name") if callspec else None
        if item.path.name in SHARED_DEPLOYMENT_SUITES.get(str(backend), ()):
            continue
        kept.append(item)
    if len(kept) != len(items):
        items[:] = kept


def pytest_configure(config: pytest.Config) -> None:
    # A suite started from a script's background job inherits SIGINT
    # ignored, and so would every program a test starts and interrupts:
    # Ctrl-C is part of the contract here, so it gets its usual meaning
    # back (in the xdist workers too, which start the programs).
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller marked it already
    token = uuid.uuid4().hex
    os.environ[RUN_TOKEN_VARIABLE] = token
    config.stash[_token_key] = token
    _snapshot_files(config)


def _marked_processes(token: str) -> list[psutil.Process]:
    """Live processes (zombies aside) whose environment carries ``token``."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == me or proc.environ().get(RUN_TOKEN_VARIABLE) != token:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.ppid() == me and any(
                h in " ".join(proc.cmdline()) for h in _OWN_HELPERS
            ):
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        found.append(proc)
    return found


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} (ppid {proc.ppid()}): {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid}: (gone while being described)"


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    # After every other implementation: xdist has stopped its workers.
    yield
    token = session.config.stash.get(_token_key, None)
    if token is None:
        return
    _check_processes(session, token)
    snapshot = session.config.stash.get(_files_key, None)
    if snapshot is not None:
        _check_files(session, token, snapshot)


def _left_after(grace: float, find: Callable[[], list[_T]], pause: float) -> list[_T]:
    """What ``find()`` still returns once it is empty or ``grace`` s passed."""
    deadline = time.monotonic() + grace
    left = find()
    while left and time.monotonic() < deadline:
        time.sleep(pause)
        left = find()
    return left


def _check_processes(session: pytest.Session, token: str) -> None:
    left = _left_after(ORPHAN_GRACE, lambda: _marked_processes(token), 0.1)
    if not left:
        return
    described = [_describe(proc) for proc in left]
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    writer = session.config.get_terminal_writer()
    writer.line()
    writer.sep("!", f"{len(left)} processes of this test run outlived it", red=True)
    for line in described:
        writer.line(line, red=True)
    writer.line("(all were killed; the run fails: a test or a backend leaks processes)")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- no file of the run survives it -------------------------------------------

#: Seconds the files of the run get to go after the last test, once its
#: processes have ended (a resource tracker unlinks what its program left).
#: The environment variable shortens it for the test of this check.
LEFTOVER_GRACE = float(os.environ.get("EXECUTORS_TEST_LEFTOVER_GRACE", "5"))
#: For the test of this check, which runs beside other runs: only entries
#: whose name contains this are looked at, and no other run can own them.
LEFTOVER_MATCH = os.environ.get("EXECUTORS_TEST_LEFTOVER_MATCH", "")
#: Where POSIX shared memory and named semaphores live on Linux.
SHM = Path("/dev/shm")
#: The prefix of every temporary folder the library creates.
TMP_PREFIX = "executors-"
#: What a Dask cluster made without a ``local_directory`` leaves in the
#: temporary folder: a test's own cluster must keep its files elsewhere.
DASK_FOLDER = "dask-scratch-space"
# Names that carry the pid of the process that made them (loky's and
# joblib's, the Celery deployment's folder): alive, it may still use them.
_PID_IN_NAME = re.compile(
    r"^(?:sem\.loky-|joblib_memmapping_folder_|executors-celery-)(\d+)[-_]"
)
_files_key = pytest.StashKey[tuple[Path, frozenset[str], frozenset[str]]]()


def _tmp_entries(tmp: Path) -> frozenset[str]:
    with contextlib.suppress(OSError):
        return frozenset(
            n for n in os.listdir(tmp) if n.startswith(TMP_PREFIX) or n == DASK_FOLDER
        )
    return frozenset()


def _shm_entries() -> frozenset[str]:
    with contextlib.suppress(OSError):
        return frozenset(os.listdir(SHM))
    return frozenset()


def _snapshot_files(config: pytest.Config) -> None:
    tmp = Path(tempfile.gettempdir())
    config.stash[_files_key] = (tmp, _tmp_entries(tmp), _shm_entries())


def _in_use() -> tuple[list[str], set[tuple[int, int]]]:
    """What live processes hold: paths open or worked in, and (device, inode) pairs.

    Inodes, because a path can lie: glibc's ``sem_open`` maps a semaphore
    under a temporary name it then renames, so ``/proc/PID/maps`` shows
    ``/dev/shm/sem.XXXXXX (deleted)`` for a live ``sem.mp-*`` entry.
    """
    paths: list[str] = []
    inodes: set[tuple[int, int]] = set()
    for pid in psutil.pids():
        proc = f"/proc/{pid}"
        with contextlib.suppress(OSError):
            paths.append(os.readlink(f"{proc}/cwd"))
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"{proc}/fd"):
                with contextlib.suppress(OSError):
                    paths.append(os.readlink(f"{proc}/fd/{fd}"))
                    st = os.stat(f"{proc}/fd/{fd}")
                    inodes.add((st.st_dev, st.st_ino))
        with contextlib.suppress(OSError, ValueError), open(f"{proc}/maps") as maps:
            for line in maps:
                # address perms offset major:minor inode [path]
                fields = line.split(None, 5)
                if len(fields) >= 5 and fields[4] != "0":
                    major, minor = fields[3].split(":")
                    device = os.makedev(int(major, 16), int(minor, 16))
                    inodes.add((device, int(fields[4])))
    return paths, inodes


def _owner_alive(name: str) -> bool:
    match = _PID_IN_NAME.match(name)
    if match is None:
        return False
    pid = int(match.group(1))
    # This process is ending its run: what it made and holds no more is left.
    if pid == os.getpid() or not psutil.pid_exists(pid):
        return False
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


def _leftover_files(
    snapshot: tuple[Path, frozenset[str], frozenset[str]],
) -> list[Path]:
    """Entries that appeared during the run and that no live process holds."""
    tmp, tmp_before, shm_before = snapshot
    candidates = [tmp / n for n in sorted(_tmp_entries(tmp) - tmp_before)]
    candidates += [SHM / n for n in sorted(_shm_entries() - shm_before)]
    candidates = [
        path
        for path in candidates
        if LEFTOVER_MATCH in path.name and not _owner_alive(path.name)
    ]
    if not candidates:
        return []
    paths, inodes = _in_use()
    left = []
    for path in candidates:
        try:
            st = path.lstat()
        except OSError:
            continue  # gone meanwhile
        if (st.st_dev, st.st_ino) in inodes:
            continue
        text = str(path)
        inside = text + os.sep
        if any(u == text or u.startswith(inside) for u in paths):
            continue
        left.append(path)
    return left


def _family_tokens(token: str) -> set[str]:
    """This run's token and those of the runs it runs inside (its ancestors')."""
    tokens = {token}
    with contextlib.suppress(psutil.Error):
        for parent in psutil.Process().parents():
            with contextlib.suppress(psutil.Error):
                theirs = parent.environ().get(RUN_TOKEN_VARIABLE)
                if theirs:
                    tokens.add(theirs)
    return tokens


def _other_runs(token: str) -> list[psutil.Process]:
    """Live processes of other test runs, and resource trackers of other programs.

    Either may own a new entry of /dev/shm or of the temporary directory
    (a resource tracker unlinks its program's leftovers when it ends).
    """
    family = _family_tokens(token)
    others = []
    for proc in psutil.process_iter():
        try:
            theirs = proc.environ().get(RUN_TOKEN_VARIABLE)
            if theirs in family or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if theirs or any(h in " ".join(proc.cmdline()) for h in _TRACKERS):
                others.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return others


_TRACKERS = ("multiprocessing.resource_tracker", "loky.backend.resource_tracker")


def _check_files(
    session: pytest.Session,
    token: str,
    snapshot: tuple[Path, frozenset[str], frozenset[str]],
) -> None:
    left = _left_after(LEFTOVER_GRACE, lambda: _leftover_files(snapshot), 0.2)
    if not left:
        return
    writer = session.config.get_terminal_writer()
    writer.line()
    others = [] if LEFTOVER_MATCH else _other_runs(token)
    if others:
        writer.sep("!", f"{len(left)} new files no live process holds", yellow=True)
        for path in left:
            writer.line(f"{'folder' if path.is_dir() else 'file'} {path}", yellow=True)
        writer.line(
            "(not counted and not removed: they may belong to another test run "
            f"or program alive now, e.g. {_describe(others[0])})",
            yellow=True,
        )
        return
    writer.sep("!", f"{len(left)} files of this test run outlived it", red=True)
    for path in left:
        kind = "folder" if path.is_dir() else "file"
        writer.line(f"{kind} {path}", red=True)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    writer.line(
        "(all were removed; the run fails: a test or a backend leaves files "
        "behind; no live process held them)"
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
