"""The project's exceptions, every one of them, as one tree.

Two families are kept apart. A task's own exception is never wrapped: it comes
out of ``Future.result()`` with its type and args, the worker's traceback
chained as ``__cause__``. Infrastructure failures (a worker that died, an
initializer that failed, a pool that is broken for good) subclass the stdlib's
:class:`concurrent.futures.BrokenExecutor`, so ``except BrokenExecutor`` code
written for the stdlib keeps working::

    LookupError
    └── BackendNotFoundError        no backend by that name
    ImportError
    └── BackendNotInstalledError    known backend, extra not installed
    concurrent.futures.BrokenExecutor
    ├── BrokenProcessPool (stdlib)
    │   └── WorkerCrashedError      a worker died under this task
    ├── InitializerFailedError      the initializer raised or killed a worker
    ├── ExecutorFailedError         the executor's own machinery failed, or it
    │   │                           lost its scheduler or broker
    │   └── DaskClusterError        the Dask cluster could not run the task
    └── ExecutorInterruptedError    Ctrl-C stopped the running tasks
        └── WorkersTerminatedError  terminate_workers()/kill_workers() stopped it
    concurrent.futures.CancelledError
    └── TaskKilledError             kill_task() stopped the running task
    TimeoutError
    └── TaskTimeoutError            the task ran past its timeout

A fault that one backend survives and another does not is reported in each
family accordingly; where backends survive the same fault (an argument that
fails to unpickle in the worker, a result that fails to unpickle in the
caller) the task fails with the exception the unpickling raised, on every
backend.
"""

from __future__ import annotations

import signal
import sys
from concurrent import futures
from concurrent.futures import BrokenExecutor, CancelledError
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "BackendNotFoundError",
    "BackendNotInstalledError",
    "DaskClusterError",
    "ExecutorFailedError",
    "ExecutorInterruptedError",
    "InitializerFailedError",
    "TaskKilledError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkersTerminatedError",
    "describe_exitcode",
]


class BackendNotFoundError(LookupError):
    """No backend is registered under the requested name."""


class BackendNotInstalledError(ImportError):
    """The backend is known but its optional dependencies are not installed.

    The message carries the exact ``pip install`` line that fixes it.
    """


class WorkerCrashedError(BrokenProcessPool):
    """A worker process died while it held the task of this future.

    A :class:`~concurrent.futures.process.BrokenProcessPool`, so code written
    for the stdlib's process pool catches it on every backend. Whether the
    executor lives on depends on the backend
    (``capabilities.survives_worker_death``).

    Attributes:
        exitcode: The worker's exit code as ``multiprocessing`` reports it
            (negative for a signal), or ``None`` when it is unknown.
    """

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[type[WorkerCrashedError], tuple[str, int | None]]:
        return (type(self), (str(self), self.exitcode))


class InitializerFailedError(BrokenExecutor):
    """The executor's ``initializer`` raised or killed its worker.

    The executor is broken for good: restarting workers whose initializer
    fails would loop forever (as raw ``multiprocessing.Pool`` does).
    """


class ExecutorFailedError(BrokenExecutor):
    """The executor's own machinery failed, or it lost what it depends on.

    A thread of its library died, or the scheduler or broker of a
    distributed backend is gone (:class:`DaskClusterError` on Dask). Never a
    task's fault: every unfinished future fails with it, and the executor is
    broken for good.
    """


class ExecutorInterruptedError(BrokenExecutor):
    """A Ctrl-C (``KeyboardInterrupt``) in the caller stopped this running task.

    Raised by the futures that were running when a ``with`` block left on
    Ctrl-C; queued futures are cancelled instead.
    """

    @classmethod
    def stopped(cls, backend: str) -> ExecutorInterruptedError:
        """The error of a running task that Ctrl-C stopped on ``backend``."""
        return cls(
            f"the {backend!r} executor was interrupted (KeyboardInterrupt); "
            "its running tasks were stopped"
        )


class WorkersTerminatedError(ExecutorInterruptedError):
    """``terminate_workers()`` or ``kill_workers()`` stopped this running task.

    The executor is shut down; queued futures were cancelled instead.
    """


# On Python 3.10 concurrent.futures.TimeoutError is its own class; from 3.11
# it is the builtin. A task timeout is both, so either `except` catches it.
if sys.version_info >= (3, 11):
    _TimeoutBase = TimeoutError
else:

    class _TimeoutBase(futures.TimeoutError, TimeoutError):
        pass


class TaskTimeoutError(_TimeoutBase):
    """The task ran longer than its timeout.

    Whether the task was stopped depends on the backend
    (``capabilities.stops_timed_out_tasks``); where it cannot be stopped it
    is abandoned and runs on, but its future has failed.

    Attributes:
        timeout: The limit, in seconds.
    """

    def __init__(self, message: str, timeout: float | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout

    def __reduce__(self) -> tuple[type[TaskTimeoutError], tuple[str, float | None]]:
        return (type(self), (str(self), self.timeout))

    @classmethod
    def ran_past(cls, timeout: float, fate: str) -> TaskTimeoutError:
        """The one message for a task past its timeout; ``fate``: what became of it."""
        return cls(
            f"the task ran longer than its timeout of {timeout:g} s; {fate}", timeout
        )


class DaskClusterError(ExecutorFailedError):
    """Dask could not run the task.

    The local cluster failed to start, the connection to the scheduler was
    lost, Dask itself cancelled the task (someone restarted the cluster), or
    a Ctrl-C leaving a ``with`` block stopped it. An
    :class:`ExecutorFailedError`, as the loss of any backend's scheduler or
    broker is.
    """


class TaskKilledError(CancelledError):
    """The task was stopped by ``kill_task()`` while it ran.

    A subclass of :class:`concurrent.futures.CancelledError`: code that
    handles cancellation handles it. The future itself is not in the
    *cancelled* state (``cancelled()`` is False), because it had started.
    """


def describe_exitcode(exitcode: int | None) -> str:
    """Describe a process exit code the way a person debugging a crash wants.

    Args:
        exitcode: ``multiprocessing.Process.exitcode``: ``-N`` means killed by
            signal ``N``.

    Returns:
        For example ``"exit code 3"`` or ``"signal SIGKILL (-9); the OOM
        killer sends SIGKILL when memory runs out"``.
    """
    if exitcode is None:
        return "an unknown exit code"
    if exitcode >= 0:
        if exitcode == 78:  # executors._mainmodule.MAIN_REIMPORTED_EXITCODE
            from ._mainmodule import describe_reimport

            return f"exit code {exitcode}, {describe_reimport()}"
        return f"exit code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    text = f"signal {name} ({exitcode})"
    if name == "SIGKILL":
        text += "; SIGKILL is also what the OOM killer sends when memory runs out"
    elif name == "SIGSEGV":
        text += "; a segfault usually comes from a C extension or ctypes"
    return text
