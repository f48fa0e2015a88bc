"""Worker side: end the worker when the process that owns its pool dies.

A worker that outlives its caller is an orphan for good when it holds both
ends of the pipe it reads tasks from (the stdlib's call queue, loky's): it
never sees EOF. A caller killed with SIGKILL (the OOM killer, ``kill -9``, a
CI timeout) runs no cleanup, so the worker must notice on its own.

The choice, of the three usual ones:

* ``prctl(PR_SET_PDEATHSIG)`` fires when the *thread* that forked the
  worker ends, and with the forkserver start method that is the fork
  server, not the caller: it would miss exactly the case that matters.
* A pipe whose write end only the caller holds needs every backend's start
  path to carry one more descriptor, and loky's and Dask's start their
  workers themselves.
* A watch thread in the worker on the caller's pid works with every start
  method and every library that lets us run code as a worker starts (an
  initializer, a worker plugin). On Linux it sleeps on a pidfd and wakes
  the moment the caller is gone; elsewhere it polls twice a second.

The fork server and the resource tracker need nothing: they exit once the
last process holding their pipes (the caller, then the workers) is gone.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time

__all__ = [
    "PARENT_GONE_EXITCODE",
    "exit_with_parent",
    "poll_until_gone",
    "process_alive",
    "wait_until_gone",
]

#: Exit code of a worker that ended because its caller died.
PARENT_GONE_EXITCODE = 70
# How often the fallback (no pidfd) checks that the caller is alive.
_POLL_SECONDS = 0.5

_watching: set[int] = set()
_watching_lock = threading.Lock()
if hasattr(os, "register_at_fork"):
    # A forked child has no watch threads (fork copies only the calling
    # thread): it must be able to start its own for the same pid.
    os.register_at_fork(after_in_child=_watching.clear)


def exit_with_parent(parent_pid: int) -> None:
    """End this process (``os._exit``) as soon as ``parent_pid`` ends.

    Call it in a worker as it starts, with the pid of the process that owns
    the pool (``os.getpid()`` read in the caller, not ``os.getppid()`` in
    the worker: under forkserver the worker's parent is the fork server).
    Idempotent per pid; does nothing in the owner itself.

    Args:
        parent_pid: The pool owner's process id.
    """
    if parent_pid == os.getpid():
        return
    with _watching_lock:
        if parent_pid in _watching:
            return
        _watching.add(parent_pid)
    pidfd = None
    try:
        pidfd = os.pidfd_open(parent_pid)  # type: ignore[attr-defined,unused-ignore]
    except ProcessLookupError:
        os._exit(PARENT_GONE_EXITCODE)  # gone before the worker started
    except (AttributeError, OSError):
        pidfd = None  # not Linux >= 5.3: poll instead
    threading.Thread(
        target=_watch,
        args=(parent_pid, pidfd),
        name="executors-parent-watch",
        daemon=True,
    ).start()


def _watch(parent_pid: int, pidfd: int | None) -> None:
    _wait(parent_pid, pidfd)
    os._exit(PARENT_GONE_EXITCODE)


def wait_until_gone(pid: int) -> None:
    """Return once process ``pid`` has ended (a pidfd, else polling).

    For a process that must outlive neither its caller nor a helper it
    started (Celery's private worker and its Redis server).
    """
    try:
        pidfd = os.pidfd_open(pid)  # type: ignore[attr-defined,unused-ignore]
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        pidfd = None  # not Linux >= 5.3: poll instead
    try:
        _wait(pid, pidfd)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _wait(pid: int, pidfd: int | None) -> None:
    if pidfd is not None:
        # Readable once the process has ended, zombie or reaped.
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll():
            pass
    else:
        poll_until_gone(pid)


def poll_until_gone(pid: int, interval: float = _POLL_SECONDS) -> None:
    """Return once process ``pid`` has ended: the watch where no pidfd exists.

    A zombie (ended, not yet reaped by its parent) has ended; a pid that
    answers EPERM belongs to another user now, so the caller (always this
    user) has ended and its pid was reused.
    """
    while process_alive(pid):
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a reused pid of another user
        return False
    # A zombie caller (killed, not yet reaped) counts as gone.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", "rb") as stat:
        if stat.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
            return False
    return True
