"""Programs that the fault tests run as real subprocesses, and their harness.

Each script is a small, realistic user program (Ctrl-C in a ``map``, exit
with work pending, ``submit`` from an ``atexit`` hook). The harness starts
one, reads its stdout line by line with a bound, and tears down the whole
process tree it started if a check fails.
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
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent


class Script:
    """A running script: its process, stdout lines as they come, its tree.

    Args:
        name: The script's file name in this directory.
        *args: Its command-line arguments.
        new_session: Start it in a session and process group of its own, as
            a shell starts a foreground job: ``os.killpg(proc.pid, SIGINT)``
            then reaches it and every process it starts, as Ctrl-C does.
    """

    def __init__(self, name: str, *args: str, new_session: bool = False) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / name), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=new_session,
        )
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.stdout: list[str] = []
        self.stderr = ""
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._out.start()
        self._err.start()
        self.seen: dict[int, psutil.Process] = {}

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait_for_line(self, text: str, bound: float) -> bool:
        """Wait until stdout shows ``text``; False at EOF or after ``bound`` s."""
        deadline = time.monotonic() + bound
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if line is None:
                return False
            if line == text:
                return True

    def descendants(self) -> list[psutil.Process]:
        """Every live descendant now, remembered for the final teardown."""
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        for p in found:
            self.seen[p.pid] = p
        return found

    def finish(self, bound: float) -> int | None:
        """Wait for exit and for the output; None if still running."""
        try:
            code = self.proc.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            return None
        self._out.join(bound)
        self._err.join(bound)
        return code

    def kill_tree(self) -> None:
        """SIGKILL this script and every descendant it was seen with."""
        self.descendants()
        for p in [*self.seen.values()]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def report(self) -> str:
        """Stdout and stderr, for failure messages."""
        return f"stdout:\n{chr(10).join(self.stdout)}\nstderr:\n{self.stderr}"


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie has exited and counts as gone)."""
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            continue
    return left


def options_json(options: dict[str, Any]) -> str:
    """The test options of a backend, as the scripts take them."""
    return json.dumps(options)
