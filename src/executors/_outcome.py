"""A task's trip to a worker and back, as bytes the project pickles itself.

Every process backend sends a call the same way and gets its outcome back
the same way, so a fault is the same fault everywhere::

    caller                          worker
    ──────                          ──────
    dumps((fn, args, kwargs)) ───▶  run_call(payload)
                                      loads: an argument that raises while
                                        unpickled is this task's error
                                      fn(*args, **kwargs): every exception,
                                        SystemExit too, is this task's error
                                      dumps(value): a result that cannot be
                                        pickled fails with the pickler's error
    decode(outcome) ◀────────────── (ok, bytes)
      loads under BaseException: a result that cannot be unpickled here
      (even by raising SystemExit) fails this future alone

The library in between (``multiprocessing.Pool``, Dask, loky, the stdlib's
pool) only ever moves ``bytes``, so none of its threads can die on a user's
pickle. Pickling uses ``ForkingPickler``'s reducers, so sockets and
connections travel as they do through ``multiprocessing``.

Worker start-up is shared too: :class:`WorkerBootstrap` is the initializer
every process backend installs. It ties the worker's life to the caller's
(:func:`executors._parentwatch.exit_with_parent`) and runs the user's
initializer; if that raises, the worker prints the traceback and exits with
:data:`INITIALIZER_FAILED_EXITCODE`, which the caller reads as "the
initializer failed" (:func:`initializer_error`).
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import Any

from ._errors import InitializerFailedError, describe_exitcode
from ._parentwatch import exit_with_parent
from ._remote import RemoteTraceback, picklable_exception

__all__ = [
    "INITIALIZER_FAILED_EXITCODE",
    "Outcome",
    "PickledCall",
    "WorkerBootstrap",
    "decode",
    "dump_error",
    "dumps",
    "initializer_error",
    "run_call",
]

#: What a worker sends back: ``(True, pickled value)`` or
#: ``(False, pickled exception)``.
Outcome = tuple[bool, bytes]

#: Exit code of a worker whose initializer raised (after printing it).
INITIALIZER_FAILED_EXITCODE = 77


class _Pickler(pickle.Pickler):
    """ForkingPickler's reducers (connections, sockets), in a shared table.

    ForkingPickler copies its reducer table on every instantiation, which
    costs more than pickling a small task; this class shares one table,
    rebuilt when a reducer is registered.
    """

    dispatch_table: dict[Any, Any] = {}
    table_sizes = (-1, -1)


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` as ``multiprocessing`` would, at the highest protocol."""
    extra = ForkingPickler._extra_reducers  # type: ignore[attr-defined]
    sizes = (len(copyreg.dispatch_table), len(extra))
    if sizes != _Pickler.table_sizes:
        # Exceptions pickle the standard way: tblib (which Dask installs)
        # registers a reducer in copyreg for every exception class, and
        # its round trip loses attributes such as SystemExit.code.
        _Pickler.dispatch_table = {
            **{
                cls: reduce
                for cls, reduce in copyreg.dispatch_table.items()
                if not (isinstance(cls, type) and issubclass(cls, BaseException))
            },
            **extra,
        }
        _Pickler.table_sizes = sizes
    buffer = io.BytesIO()
    _Pickler(buffer, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def dump_error(exc: BaseException) -> bytes:
    """Pickle a task's exception with the worker's traceback attached."""
    try:
        return dumps(picklable_exception(exc))
    except Exception as why:  # pragma: no cover - picklable_exception checks
        return dumps(RuntimeError(f"{type(exc).__qualname__}: {exc!s} ({why!r})"))


def run_call(payload: bytes) -> Outcome:
    """Run one pickled ``(fn, args, kwargs)`` in a worker; never raise."""
    try:
        fn, args, kwargs = pickle.loads(payload)
        value = fn(*args, **kwargs)
    except BaseException as exc:
        return False, dump_error(exc)
    try:
        return True, dumps(value)
    except BaseException as exc:
        return False, dump_error(exc)


def decode(outcome: Outcome) -> tuple[bool, Any]:
    """Unpickle a worker's outcome in the caller; a failure is the task's.

    Returns:
        ``(True, value)``, or ``(False, exception)`` for the task's own
        exception and for one raised while unpickling (``SystemExit``
        included: it must fail one future, not the thread decoding it).
    """
    try:
        ok, data = outcome
        return ok, pickle.loads(data)
    except BaseException as exc:
        return False, exc


class PickledCall:
    """A call pickled only when a library sends it, in the library's thread.

    Its own pickle is the bytes of ``(fn, args, kwargs)``, so the worker
    receives plain bytes for :func:`run_call`. A map's chunks travel this
    way: the first reaches a worker while the caller is still submitting
    the others.
    """

    __slots__ = ("call",)

    def __init__(self, call: tuple[Any, tuple[Any, ...], dict[str, Any]]) -> None:
        self.call = call

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        return bytes, (dumps(self.call),)


class WorkerBootstrap:
    """The initializer of every worker process a backend starts.

    Args:
        parent_pid: The caller's pid: the worker exits when it dies.
        initializer: The user's initializer, or ``None``.
        initargs: Its arguments.
    """

    __slots__ = ("initargs", "initializer", "parent_pid")

    def __init__(
        self,
        parent_pid: int,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        self.parent_pid = parent_pid
        self.initializer = initializer
        self.initargs = initargs

    def __call__(self) -> None:
        exit_with_parent(self.parent_pid)
        if self.initializer is None:
            return
        try:
            self.initializer(*self.initargs)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(INITIALIZER_FAILED_EXITCODE)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return WorkerBootstrap, (self.parent_pid, self.initializer, self.initargs)


def initializer_error(
    backend: str,
    pid: int | None,
    summary: str | None = None,
    text: str | None = None,
    exitcode: int | None = None,
) -> InitializerFailedError:
    """The error of an executor whose initializer failed in a worker.

    Args:
        backend: The backend's name.
        pid: The worker's pid, if known.
        summary: ``"Type: message"`` of the initializer's exception, when
            the worker could report it.
        text: Its formatted traceback, chained as ``__cause__``.
        exitcode: The worker's exit code when it died instead.
    """
    where = f"worker pid {pid}" if pid is not None else "a worker"
    if summary is not None:
        error = InitializerFailedError(
            f"the initializer of the {backend!r} executor raised in {where}: "
            f"{summary}; the executor is broken"
        )
        if text is not None:
            error.__cause__ = RemoteTraceback(text)
        return error
    if exitcode == INITIALIZER_FAILED_EXITCODE:
        return InitializerFailedError(
            f"the initializer of the {backend!r} executor raised in {where} "
            "(its traceback was printed to the worker's stderr); the executor "
            "is broken"
        )
    return InitializerFailedError(
        f"{where} of the {backend!r} executor died with "
        f"{describe_exitcode(exitcode)} while its initializer ran; the "
        "executor is broken"
    )
