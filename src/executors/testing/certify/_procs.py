"""The processes of a certify run: the children it starts, and the final kill.

Every process the run starts carries ``EXECUTORS_CERTIFY_RUN=<token>`` in
its environment; at the end the command kills whatever still carries it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import IO, Any

__all__ = ["RUN_TOKEN_VARIABLE", "Child", "describe_exit", "kill_marked"]

RUN_TOKEN_VARIABLE = "EXECUTORS_CERTIFY_RUN"

#: multiprocessing's (and loky's) resource trackers unlink the semaphores
#: and shared memory their processes leaked once those are gone: they are
#: killed last, after this many seconds to do so.
TRACKER_GRACE = 5.0
_TRACKERS = ("resource_tracker", "semaphore_tracker")


def kill_marked(token: str, child: subprocess.Popen[Any] | None = None) -> list[int]:
    """Kill every process whose environment carries the run's token.

    Resource trackers go last, once the processes they watch are dead, so
    that they remove what those left in ``/dev/shm``; then, as a backstop,
    the child's whole process group.
    """
    import psutil

    me = os.getpid()
    marked: list[psutil.Process] = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != me and proc.environ().get(RUN_TOKEN_VARIABLE) == token:
                marked.append(proc)
        except (psutil.Error, OSError):
            continue

    def is_tracker(proc: psutil.Process) -> bool:
        try:
            return any(t in " ".join(proc.cmdline()) for t in _TRACKERS)
        except psutil.Error:
            return False

    def kill(procs: list[psutil.Process]) -> None:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=5)

    trackers = [p for p in marked if is_tracker(p)]
    kill([p for p in marked if p not in trackers])
    # Orphaned, a tracker reads EOF, cleans up and exits by itself.
    _, alive = psutil.wait_procs(trackers, timeout=TRACKER_GRACE)
    kill(alive)
    if child is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(10)
    return [p.pid for p in marked]


class Child:
    """A child process whose events the command reads as they come."""

    def __init__(
        self, cmd: list[str], cwd: Path, env: dict[str, str], log: IO[bytes]
    ) -> None:
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"
