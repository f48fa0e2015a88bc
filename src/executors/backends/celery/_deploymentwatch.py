"""The thread that watches the private deployment while the executor runs.

It reads the worker's reports (see :mod:`._deployment`) and looks at the
processes between them; the executor breaks on what no task can survive::

    init-failed from a pool process          -> InitializerFailedError
    a pool process gone while "init" ran     -> InitializerFailedError
    the worker's main process or Redis gone  -> ExecutorFailedError
    result-refused for a task                -> that task fails (memory cap)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..._bootstrap import initializer_error
from ..._errors import ExecutorFailedError, describe_exitcode
from ..._lifecycle import ManagerThread
from ..._parentwatch import process_alive
from ._deployment import LocalDeployment, exit_status
from .worker import RESULT_REFUSED

__all__ = ["DeploymentWatch"]

# How often the watch looks at the processes while the pipe is quiet.
_WATCH_SECONDS = 0.2


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
        self._stopping = False

    def stop(self) -> None:
        """Ask the thread to end, within ``_WATCH_SECONDS``.

        The deployment is going down: a process that exits from now on
        breaks nothing.
        """
        self._stopping = True

    def on_failure(self, error: BaseException) -> None:
        self._failed(error)

    def loop(self) -> None:
        for record in self._early:
            if self._on_record(record):
                return
        deployment = self._deployment
        while not self._stopping:
            readable = deployment.wait_for_reports(_WATCH_SECONDS)
            # Before reading: a deployment that is stopping closes the pipe.
            if self._stopping:
                return
            if readable:
                # None: every process that could report is gone, which
                # the look at the processes below tells.
                for record in deployment.read_reports() or ():
                    if self._on_record(record):
                        return
            if self._check_processes():
                return

    def _on_record(self, record: dict[str, Any]) -> bool:
        """Act on one report; True once the executor is broken."""
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
        """Whether a process of the deployment is gone (the executor broke)."""
        deployment = self._deployment
        for name, proc in (
            ("worker", deployment.worker),
            ("Redis server", deployment.redis),
        ):
            # Not reaped: see LocalDeployment.signal_worker.
            code = None if proc is None else exit_status(proc)
            if code is not None and not self._stopping:
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
