"""The project's exceptions.

Two families are kept apart. A task's own exception is never wrapped: it comes
out of ``Future.result()`` with its type and args, the worker's traceback
chained as ``__cause__``. Infrastructure failures (a worker that died, an
initializer that failed, a pool that is broken for good) subclass the stdlib's
:class:`concurrent.futures.BrokenExecutor`, so ``except BrokenExecutor`` code
written for the stdlib keeps working.
"""

from __future__ import annotations

import signal
from concurrent.futures import BrokenExecutor

__all__ = [
    "BackendNotFoundError",
    "BackendNotInstalledError",
    "InitializerFailedError",
    "WorkerCrashedError",
    "describe_exitcode",
]


class BackendNotFoundError(LookupError):
    """No backend is registered under the requested name."""


class BackendNotInstalledError(ImportError):
    """The backend is known but its optional dependencies are not installed.

    The message carries the exact ``pip install`` line that fixes it.
    """


class WorkerCrashedError(BrokenExecutor):
    """A worker process died while it held the task of this future.

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
