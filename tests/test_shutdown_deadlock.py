"""No thread of a library runs a blocking call of ours: CPython's shutdown deadlock.

CPython's own ``test_shutdown_deadlock``: a worker dies after
``shutdown(wait=True)`` began. On Python 3.12+ the stdlib process pool's
manager thread fails the pending futures while holding the pool's shutdown
lock; our done-callback, run by that thread, settled the last call, found
the executor closed and idle and released the stdlib pool from there, which
takes the same lock: the manager waited for itself and ``shutdown()`` for
the manager. The release now runs on the core's own thread
(:func:`executors._lifecycle.run_released`), for every backend.

The scenario runs as a program with a bound, on the interpreter running the
tests (the nox ``core`` session runs it on 3.10 and 3.13) and on a Python
3.13 found beside it, where it deadlocked.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import executors
from executors._callqueue import CallQueue
from executors._futures import Future

SCRIPT = Path(__file__).parent / "_fault_scripts" / "shutdown_deadlock.py"
# The source tree, for an interpreter that has not installed the package.
SOURCE = Path(executors.__file__).resolve().parent.parent
# The raw stdlib pool passes in about a second; a deadlock never ends.
BOUND = 60.0
PROCESS_BACKENDS = ["process", "mp_pool", "queue"]

pytestmark = pytest.mark.timeout(3 * BOUND)


def _python313() -> str | None:
    """A Python 3.13 interpreter: this one, one on PATH, or pyenv's."""
    if sys.version_info[:2] == (3, 13):
        return sys.executable
    found = shutil.which("python3.13")
    candidates = [found] if found else []
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(
        glob.glob(os.path.join(root, "versions", "3.13*", "bin", "python"))
    )
    for candidate in candidates:
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 13)":
            return candidate
    return None


def _run(python: str, backend: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SOURCE), *filter(None, [env.get("PYTHONPATH")])]
    )
    # A session of its own: on a deadlock the workers go with the program.
    proc = subprocess.Popen(
        [python, str(SCRIPT), backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(
            f"shutdown(wait=True) deadlocked on {backend!r} under {python} "
            f"(no end within {BOUND:g} s); stderr:\n{err}"
        )
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("DONE WorkerCrashedError"), (
        result.stdout,
        result.stderr,
    )


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_a_worker_dying_during_shutdown_does_not_deadlock_it(backend: str) -> None:
    _check(_run(sys.executable, backend))


@pytest.mark.slow
@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_the_same_on_python_3_13(backend: str) -> None:
    python = _python313()
    if python is None:
        pytest.skip("no Python 3.13 interpreter found (PATH or pyenv)")
    _check(_run(python, backend))


# -- the core rule, without a process pool ------------------------------------


def test_on_idle_never_runs_in_the_thread_that_settles_the_last_call() -> None:
    """The stdlib's shape, in miniature: a library thread settles our calls
    while holding a lock that releasing the library takes."""
    library_lock = threading.Lock()
    launched: list[Any] = []
    released_in: list[str] = []

    def release() -> None:
        with library_lock:  # the stdlib's shutdown() takes its shutdown lock
            released_in.append(threading.current_thread().name)

    calls = CallQueue(launched.append, 2, on_idle=release)
    future: Future[Any] = Future()
    calls.submit(future, None)
    calls.close()  # the caller's shutdown(): not idle yet

    def library_thread() -> None:
        with library_lock:  # terminate_broken() fails futures under its lock
            calls.settle(launched[0], error=RuntimeError("worker died"))

    # A daemon: before the fix it never ends.
    thread = threading.Thread(
        target=library_thread, name="library-manager", daemon=True
    )
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the library's thread waited for itself"
    # wait_idle() on a closed queue returns once the workers are released.
    assert calls.wait_idle(BOUND)
    assert released_in == ["executors-reaper"]
    assert isinstance(future.exception(timeout=0), RuntimeError)


def test_on_idle_runs_at_once_in_the_closing_thread_when_idle() -> None:
    released_in: list[str] = []
    calls = CallQueue(
        lambda call: None,
        1,
        on_idle=lambda: released_in.append(threading.current_thread().name),
    )
    calls.close()
    assert released_in == [threading.current_thread().name]
    assert calls.wait_idle(0)
