"""The private deployment: a Redis server and one ``celery worker``.

``create("celery", max_workers=N)`` without ``app``/``broker`` starts, on the
first ``submit`` or ``map``::

    caller ──▶ redis-server          unix socket in a 0700 directory, random
       │                             password, no TCP port, no persistence
       └────▶ celery worker          -A executors.backends.celery.worker
                --pool=prefork --concurrency=N, no heartbeat/gossip/mingle
                 └─ N pool processes (their initializer: the user's)

Both run in their own session, so a Ctrl-C in the terminal reaches only the
caller, which then stops them. Nothing outlives the caller:

* ``shutdown()`` kills the worker's process group and the Redis server
  once every future has settled (nothing runs then), and waits for both.
* A caller killed with SIGKILL runs no cleanup: the worker's main process
  watches the caller's pid and kills the Redis server and itself; each
  pool process watches both the caller and the main process
  (:func:`executors._parentwatch.exit_with_parent`).

The Redis server is :mod:`._redisserver`'s. The worker reports on a pipe,
one JSON record a line: ``ready`` once it consumes; for each pool process
that runs an initializer ``init``/``init-ok``/``init-failed``; and
``result-refused`` for a result Redis refused. :meth:`LocalDeployment.wait_ready`
reads it until ``ready``, then :class:`~._deploymentwatch.DeploymentWatch`
reads on and watches both processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from ..._errors import ExecutorFailedError, describe_exitcode
from ._redisserver import (
    DEFAULT_MAX_MEMORY,
    last_words,
    redis_server_binary,
    start_redis_server,
)
from .worker import PRIVATE_VARIABLE

__all__ = [
    "GRACEFUL_SECONDS",
    "QUEUE",
    "START_SECONDS",
    "LocalDeployment",
    "exit_status",
]

#: The queue the private worker consumes.
QUEUE = "executors"
#: How long the deployment may take to start (Redis, then the worker
#: importing Celery and forking its pool: about a second on an idle
#: machine, many on a loaded CI runner).
START_SECONDS = 60.0
#: How long a warm shutdown of the worker may take before it is killed.
GRACEFUL_SECONDS = 10.0
# Variables of the caller's environment the private worker must not take:
# Celery reads the first two before its own settings, and a configuration
# module of the caller's own Celery app is not this deployment's.
_NOT_INHERITED = frozenset(
    {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_CONFIG_MODULE"}
)
# The most of the report pipe read at once.
_READ_BYTES = 65536


def _import_path() -> list[str]:
    """The caller's import path, absolute (``""`` is its working directory)."""
    return [os.path.abspath(p or os.curdir) for p in sys.path if isinstance(p, str)]


def exit_status(proc: subprocess.Popen[bytes]) -> int | None:
    """The exit code of ``proc`` if it ended, without reaping it.

    A process that is not reaped keeps its pid (and its process group id)
    to itself, so signalling its group later cannot hit a stranger.
    """
    if proc.returncode is not None:
        return proc.returncode
    if not hasattr(os, "waitid"):
        return proc.poll()  # not Linux: reaped; no group signal follows
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return proc.poll()
    if info is None or info.si_pid == 0:
        return None
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status


def _wait_exit(proc: subprocess.Popen[bytes], bound: float = 5.0) -> int | None:
    """The exit code of ``proc`` once it ended (None if not within ``bound``)."""
    deadline = time.monotonic() + bound
    while (code := exit_status(proc)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return code


class LocalDeployment:
    """A Redis server and a Celery worker that belong to this process.

    Args:
        slots: Pool processes of the worker (``--concurrency``).
        max_tasks_per_child: Replace a pool process after this many tasks.
        initializer: The pickled ``(initializer, initargs)``, or ``None``.
        include: More task modules for the worker to import (``--include``),
            beyond the executors' generic task.
        max_memory: The Redis server's memory cap in bytes.
        max_memory_per_child: Replace a pool process whose resident memory
            passed this many bytes after a task (Celery's option, in KiB).
        graceful: :meth:`stop` asks the worker for Celery's warm shutdown
            first (bounded by :data:`GRACEFUL_SECONDS`), so that each pool
            process leaves normally and runs its finalizer.
    """

    def __init__(
        self,
        slots: int,
        max_tasks_per_child: int | None = None,
        initializer: bytes | None = None,
        include: tuple[str, ...] = (),
        max_memory: int = DEFAULT_MAX_MEMORY,
        max_memory_per_child: int | None = None,
        graceful: bool = False,
    ) -> None:
        self.slots = slots
        self.max_memory = max_memory
        self._include = include
        self._max_tasks_per_child = max_tasks_per_child
        self._max_memory_per_child = max_memory_per_child
        self._graceful = graceful
        self._initializer = initializer
        self._binary = redis_server_binary()
        self._folder: str | None = None
        self.redis: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        # The read end of the pipe the worker reports on, and the start of
        # a line not read whole yet.
        self.report_fd: int | None = None
        self._partial_line = b""
        self.url = ""

    # -- starting -----------------------------------------------------------

    def start(self) -> None:
        """Start Redis and the worker; return once Redis listens.

        Raises:
            ExecutorFailedError: a process failed to start in time; every
                process started is stopped again.
        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        # The caller's pid in the name: a leftover tells whose it was.
        self._folder = folder = tempfile.mkdtemp(
            prefix=f"executors-celery-{os.getpid()}-"
        )
        server = start_redis_server(self._binary, folder, self.max_memory)
        self.redis = server.process
        self.url = server.url
        init_path = None
        if self._initializer is not None:
            # The worker reads and deletes it as it starts.
            init_path = os.path.join(folder, "initializer.pickle")
            fd = os.open(init_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as file:
                file.write(self._initializer)
        read_end, write_end = os.pipe()
        self.report_fd = read_end
        # The URL holds the password: it goes through a pipe that the
        # worker reads once, never through the environment, which every
        # task and every process a task starts can read.
        secret_read, secret_write = os.pipe()
        try:
            os.write(secret_write, self.url.encode())
        finally:
            os.close(secret_write)
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        # Billiard's temporary folder (pymp-*) is made in the worker's
        # TMPDIR and removed only at a clean exit, which a killed worker
        # never has: in the private folder it goes with it. The pool
        # processes get the caller's TMPDIR back for the tasks.
        env["TMPDIR"] = folder
        env[PRIVATE_VARIABLE] = json.dumps(
            {
                "caller": os.getpid(),
                "redis": self.redis.pid,
                "folder": folder,
                "report": write_end,
                "secret": secret_read,
                "init": init_path,
                # For the pool processes: the caller's tasks may need the
                # modules the caller imported from its own path.
                "path": _import_path(),
                "cwd": os.getcwd(),
                "tmpdir": os.environ.get("TMPDIR"),
            }
        )
        try:
            # In the private folder, not the caller's working directory:
            # `python -m` puts the working directory first on the import
            # path, and Celery adds it as it imports the app, so a
            # celery.py (or kombu.py, ...) planted there would run in the
            # worker. The pool processes go back to the caller's.
            self.worker = subprocess.Popen(
                self._worker_command(),
                env=env,
                cwd=folder,
                pass_fds=[write_end, secret_read],
                start_new_session=True,
            )
        finally:
            os.close(write_end)
            os.close(secret_read)
        self._wait_for_socket(server.socket_path)

    def _worker_command(self) -> list[str]:
        command = [
            sys.executable,
            # Celery warns when a worker runs as root; this one runs as the
            # caller's own user, on a broker nobody else can reach.
            "-W",
            "ignore::UserWarning:celery.platforms",
            "-m",
            "celery",
            "-A",
            "executors.backends.celery.worker",
            "-q",
            "worker",
            "--pool=prefork",
            f"--concurrency={self.slots}",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-O",
            "fair",
            "-Q",
            QUEUE,
            "--loglevel=WARNING",
            "-n",
            f"executors-{os.getpid()}-{secrets.token_hex(4)}@%h",
        ]
        if self._max_tasks_per_child is not None:
            command.append(f"--max-tasks-per-child={self._max_tasks_per_child}")
        if self._max_memory_per_child is not None:
            # Celery counts KiB; at least one, so a tiny limit still recycles.
            kib = max(1, self._max_memory_per_child // 1024)
            command.append(f"--max-memory-per-child={kib}")
        if self._include:
            command.append(f"--include={','.join(self._include)}")
        return command

    def _wait_for_socket(self, path: str) -> None:
        assert self.redis is not None
        assert self._folder is not None
        deadline = time.monotonic() + START_SECONDS
        while not os.path.exists(path):
            code = exit_status(self.redis)
            if code is not None:
                raise ExecutorFailedError(
                    f"the Redis server of the private Celery deployment exited "
                    f"with {describe_exitcode(code)} as it started; its last "
                    f"words:\n{last_words(self._folder)}"
                )
            if time.monotonic() > deadline:
                raise ExecutorFailedError(
                    f"the Redis server of the private Celery deployment did not "
                    f"start within {START_SECONDS:.0f}s; its last words:\n"
                    f"{last_words(self._folder)}"
                )
            time.sleep(0.002)

    # -- the worker's reports -------------------------------------------------

    def wait_ready(self) -> list[dict[str, Any]]:
        """Block until the worker reports ``ready``; return its other records.

        Those are the records read so far (a pool process's ``init``, say),
        for the deployment's watch to handle first.

        Raises:
            ExecutorFailedError: the worker exited or did not get ready.
        """
        assert self.worker is not None
        deadline = time.monotonic() + START_SECONDS
        records: list[dict[str, Any]] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExecutorFailedError(
                    "the worker of the private Celery deployment did not get "
                    f"ready within {START_SECONDS:.0f}s"
                )
            read = self.read_reports() if self.wait_for_reports(min(left, 0.5)) else []
            if read is None or exit_status(self.worker) is not None:
                code = _wait_exit(self.worker)
                raise ExecutorFailedError(
                    "the worker of the private Celery deployment exited with "
                    f"{describe_exitcode(code)} as it started (its errors are "
                    "on stderr)"
                )
            ready = any(record["event"] == "ready" for record in read)
            records += [record for record in read if record["event"] != "ready"]
            if ready:
                return records

    def wait_for_reports(self, timeout: float) -> bool:
        """Whether the pipe has something to read within ``timeout``.

        End of file counts: :meth:`read_reports` then says so.
        """
        fd = self.report_fd
        if fd is None:
            return True  # stopped: read_reports says so
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)

    def read_reports(self) -> list[dict[str, Any]] | None:
        """The records the worker wrote whole (the pipe is readable).

        Call it once :meth:`wait_for_reports` returned True: it blocks
        otherwise.

        Returns:
            The records (none while a line is still cut), or ``None`` once
            no process holds the pipe's write end (or :meth:`stop` closed
            it).
        """
        fd = self.report_fd
        if fd is None:
            return None
        chunk = os.read(fd, _READ_BYTES)
        if not chunk:
            return None
        *lines, self._partial_line = (self._partial_line + chunk).split(b"\n")
        return [json.loads(line) for line in lines]

    # -- stopping -------------------------------------------------------------

    def signal_worker(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the worker's whole process group.

        Pool processes that outlived their main process (it was killed
        alone) are still in the group. The group is signalled only while
        the main process is not reaped: its pid, and so the group's id,
        cannot be reused before (nothing here reaps it but :meth:`stop`).
        """
        worker = self.worker
        if worker is not None and worker.returncode is None:
            with contextlib.suppress(OSError):
                os.killpg(worker.pid, sig)

    def _stop_warm(self) -> None:
        # SIGTERM to the main process alone: Celery closes its pool, each
        # pool process finishes its loop and leaves through billiard's exit
        # path (worker_process_shutdown: the finalizer runs). Nothing runs
        # now (the executor is idle), so this takes about a second.
        worker = self.worker
        if worker is None or exit_status(worker) is not None:
            return
        with contextlib.suppress(OSError):
            os.kill(worker.pid, signal.SIGTERM)
        _wait_exit(worker, GRACEFUL_SECONDS)

    def kill(self) -> None:
        """Kill the worker (its whole process group) and Redis, now."""
        self.signal_worker(signal.SIGKILL)
        if self.redis is not None and exit_status(self.redis) is None:
            with contextlib.suppress(OSError):
                self.redis.kill()

    def stop(self) -> None:
        """Kill everything, reap it and remove the private folder. Idempotent.

        With ``graceful``, the worker first gets Celery's warm shutdown.
        """
        if self._graceful:
            self._graceful = False
            self._stop_warm()
        self.kill()
        for proc in (self.worker, self.redis):
            if proc is not None:
                proc.wait()
        if self.report_fd is not None:
            os.close(self.report_fd)
            self.report_fd = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
