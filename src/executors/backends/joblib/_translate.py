"""The one boundary where joblib's and loky's errors become the project's."""

from __future__ import annotations

import pickle
import re
from concurrent.futures.thread import BrokenThreadPool

from joblib.externals.loky.process_executor import (
    BrokenProcessPool as LokyBrokenProcessPool,
)
from joblib.externals.loky.process_executor import (
    ShutdownExecutorError,
    TerminatedWorkerError,
)

from ..._errors import (
    ExecutorFailedError,
    InitializerFailedError,
    WorkerCrashedError,
    describe_exitcode,
)
from ..._outcome import INITIALIZER_FAILED_EXITCODE, initializer_error

__all__ = ["is_breaking", "translate_error"]

BACKEND = "joblib"

# loky's message for a task it could not pickle; it keeps only the text of
# the pickler's error (as __cause__), not the error itself.
_LOKY_PICKLING_FAILED = "Could not pickle the task to send it to the workers."

# loky's TerminatedWorkerError message lists the exit codes of the dead
# workers as "{EXIT(3), SIGKILL(-9)}".
_EXITCODES = re.compile(r"exit codes of the workers are \{([^}]*)\}")
_ONE_EXITCODE = re.compile(r"\((-?\d+)\)")


def _exitcodes(message: str) -> list[int]:
    found = _EXITCODES.search(message)
    if found is None:
        return []
    return [int(code) for code in _ONE_EXITCODE.findall(found.group(1))]


def translate_error(exc: BaseException, payload: object = None) -> BaseException:
    """Turn a pool's infrastructure error into the project's; others pass.

    A dead loky worker (:class:`~joblib.externals.loky.process_executor.
    TerminatedWorkerError`) becomes :class:`executors.WorkerCrashedError`
    carrying the exit code loky reported, or
    :class:`executors.InitializerFailedError` when the worker exited with
    :data:`~executors._outcome.INITIALIZER_FAILED_EXITCODE`; loky's other
    ``BrokenProcessPool`` errors become :class:`executors.WorkerCrashedError`
    without an exit code. The original is kept as ``__cause__``. loky's
    ``PicklingError("Could not pickle the task ...")`` becomes the error the
    pickler raised (a ``TypeError`` for a lock, as on every other backend),
    with loky's traceback of it as ``__cause__``. A task's own exception
    never reaches this function: it travels back as bytes.

    Args:
        exc: The exception a pool reported for a task.
        payload: The task's :class:`~._trip.Payload`, if known: it holds the
            pickler's own error when pickling it failed.

    Returns:
        A new exception instance to set on one future, or ``exc`` itself.
    """
    if type(exc) is pickle.PicklingError and str(exc) == _LOKY_PICKLING_FAILED:
        original = getattr(payload, "error", None)
        if isinstance(original, BaseException):
            # As `raise original from cause` would.
            original.__cause__ = exc.__cause__
            original.__suppress_context__ = True
            return original
        return exc
    if isinstance(exc, TerminatedWorkerError):
        codes = _exitcodes(str(exc))
        if INITIALIZER_FAILED_EXITCODE in codes:
            error: BaseException = initializer_error(
                BACKEND, None, exitcode=INITIALIZER_FAILED_EXITCODE
            )
        else:
            exitcode = next((code for code in codes if code != 0), None)
            if exitcode is None and codes:
                exitcode = codes[0]
            error = WorkerCrashedError(
                f"a worker process of the {BACKEND!r} executor died unexpectedly "
                f"({describe_exitcode(exitcode)}) while tasks were pending; "
                "the executor is broken and every unfinished task failed",
                exitcode,
            )
        error.__cause__ = exc
        return error
    if isinstance(exc, LokyBrokenProcessPool):
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = WorkerCrashedError(f"the {BACKEND!r} executor is broken: {first_line}")
        error.__cause__ = exc
        return error
    if isinstance(exc, BrokenThreadPool):
        # A thread pool breaks for one reason only: an initializer raised.
        error = InitializerFailedError(
            f"the initializer of the {BACKEND!r} executor raised in a thread: {exc}"
        )
        error.__cause__ = exc
        return error
    if isinstance(exc, ShutdownExecutorError):
        # loky's messages: the stdlib's "cannot schedule new futures after
        # shutdown" from submit, or "... shutdown with kill_workers=True
        # before this job could complete".
        return RuntimeError(str(exc))
    return exc


def is_breaking(error: BaseException) -> bool:
    """Whether a translated error means the pool is broken for good."""
    return isinstance(
        error, (WorkerCrashedError, InitializerFailedError, ExecutorFailedError)
    )
