"""Real programs that a test kills or interrupts, and the processes they leave.

One driver for every test that runs a caller as a subprocess and then kills
it, sends it Ctrl-C or lets it exit (the scripts of ``_fault_scripts``, the
Dask and joblib edge cases): it reads the program's stdout line by line with
a bound, remembers every process it was seen with, and kills that whole tree
at teardown, so that nothing outlives the test even when a check fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

import psutil
import pytest

from executors.testing import BOUND

__all__ = [
    "Program",
    "alive",
    "alive_at",
    "describe",
    "ready_caller",
    "run_python",
    "wait_until_empty",
    "wait_until_gone",
]


class Program:
    """A Python program running, read line by line, with its process tree.

    Args:
        *argv: The interpreter's arguments: a script's path and its
            arguments, or ``"-c", source, ...``.
        new_session: Start it in a session and process group of its own, as
            a shell starts a foreground job: ``os.killpg(proc.pid, SIGINT)``
            then reaches it and every process it starts (as Ctrl-C does), and
            never pytest. Without one, the teardown cannot kill by group.
        env: Variables to set in its environment, beside the test's.
    """

    def __init__(
        self,
        *argv: str,
        new_session: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.new_session = new_session
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            start_new_session=new_session,
        )
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        #: Every stdout line so far, without its newline.
        self.stdout: list[str] = []
        self._stderr: list[str] = []
        #: Every process this program was seen with, by pid.
        self.seen: dict[int, psutil.Process] = {}
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        """What the program wrote to stderr so far (all of it after ``finish``)."""
        return "".join(self._stderr)

    # -- reading -------------------------------------------------------------

    def _next_line(self, deadline: float) -> str | None:
        try:
            return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def wait_for_line(self, text: str, bound: float) -> bool:
        """Wait until stdout shows ``text``; False at EOF or after ``bound`` s."""
        deadline = time.monotonic() + bound
        while True:
            line = self._next_line(deadline)
            if line is None:
                return False
            if line == text:
                return True

    def line_starting(self, prefix: str, bound: float) -> str:
        """The next stdout line that starts with ``prefix``; fails the test if none."""
        deadline = time.monotonic() + bound
        while True:
            line = self._next_line(deadline)
            if line is None:
                pytest.fail(f"no line {prefix!r} within {bound:.0f}s\n{self.report()}")
            if line.startswith(prefix):
                return line

    def json_after(self, prefix: str, bound: float) -> Any:
        """The JSON value after ``prefix`` on the next line that starts with it."""
        return json.loads(self.line_starting(prefix, bound)[len(prefix) :])

    # -- signals -------------------------------------------------------------

    def interrupt(self, target: str) -> float:
        """SIGINT to the program's process group, as Ctrl-C in a terminal
        sends it, if ``target`` is ``"group"``; else to the program alone.
        When it was sent (``time.monotonic()``)."""
        if target == "group":
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            os.kill(self.proc.pid, signal.SIGINT)
        return time.monotonic()

    # -- processes -----------------------------------------------------------

    def descendants(self) -> list[psutil.Process]:
        """Every live descendant now, remembered for the final kill."""
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        for process in found:
            self.seen.setdefault(process.pid, process)
        return found

    def track(self, pids: Iterable[int]) -> list[psutil.Process]:
        """Processes the program named (it may die and orphan them), remembered."""
        tracked = []
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                tracked.append(self.seen.setdefault(pid, psutil.Process(pid)))
        return tracked

    def wait(self, bound: float) -> int | None:
        """The exit code, or None if the program still runs after ``bound`` s."""
        try:
            return self.proc.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            return None

    def finish(self, bound: float) -> int | None:
        """Wait for the exit and for the whole output; None if still running."""
        code = self.wait(bound)
        if code is not None:
            for reader in self._readers:
                reader.join(bound)
        return code

    def kill_tree(self) -> None:
        """SIGKILL the program and every process it was ever seen with."""
        self.descendants()
        for process in self.seen.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        if self.new_session:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=BOUND)
        for reader in self._readers:
            reader.join(BOUND)

    def report(self) -> str:
        """Stdout and the end of stderr, for failure messages."""
        out, err = "\n".join(self.stdout), "".join(self._stderr[-60:])
        return f"stdout:\n{out}\nstderr (end):\n{err}"


def run_python(
    *argv: str, timeout: float = 60, cwd: Any = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python *argv`` to its end, ``env`` added to the test's
    environment; its exit code and output, as text."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def ready_caller(
    *argv: str, env: Mapping[str, str] | None = None, bound: float = 90.0
) -> Iterator[Program]:
    """A :class:`Program` that has printed ``READY`` within ``bound`` s (the
    callers wait up to 60 s for a first task); killed at the end, with the
    processes it still has then. In the caller's session: what it leaves
    once the test has killed it (a resource tracker that removes its
    semaphores) is not killed with it."""
    caller = Program(*argv, env=env, new_session=False)
    try:
        assert caller.wait_for_line("READY", bound), caller.report()
        yield caller
    finally:
        caller.kill_tree()


def wait_until_empty(
    left: Callable[[], Collection[Any]], bound: float, what: str
) -> None:
    """Wait until ``left()`` is empty; fail the test with what it still shows."""
    deadline = time.monotonic() + bound
    while found := left():
        assert time.monotonic() < deadline, f"{what}: {found}"
        time.sleep(0.05)


def alive(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those still running; a zombie has exited and counts as gone.

    ``is_running()`` also rules out a pid the system has given to a new
    process since.
    """
    left = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
    return left


def alive_at(processes: list[psutil.Process], deadline: float) -> list[psutil.Process]:
    """Those still running at ``deadline`` (``time.monotonic()``); sooner if none."""
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive(processes)


def wait_until_gone(processes: list[psutil.Process], bound: float) -> float | None:
    """Seconds until every process has exited, or None if some outlive ``bound``."""
    start = time.monotonic()
    while alive(processes):
        if time.monotonic() - start > bound:
            return None
        time.sleep(0.02)
    return time.monotonic() - start


def describe(processes: Iterable[psutil.Process]) -> str:
    """``"pid command line"`` of each process, for failure messages."""
    described = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            described.append(f"{process.pid} {' '.join(process.cmdline())[-80:]}")
    return ", ".join(described)
