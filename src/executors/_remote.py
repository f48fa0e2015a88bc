"""Carry a task's exception and its traceback across a process boundary.

Tracebacks do not pickle. A worker wraps the exception in
:class:`ExceptionWithTraceback`; unpickling it in the parent rebuilds the
original exception (same type, same args) with the worker's formatted
traceback chained as ``__cause__``, exactly as ``concurrent.futures.process``
does, so ``traceback.print_exception`` shows where the task failed.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any

__all__ = ["ExceptionWithTraceback", "RemoteTraceback", "picklable_exception"]


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in another process."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _rebuild_exc(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def _rebuild_reduced(reduced: tuple[Any, ...], tb: str) -> BaseException:
    func, args, *rest = reduced
    exc: BaseException = func(*args)
    state = rest[0] if rest else None
    if state:
        exc.__setstate__(state)
    return _rebuild_exc(exc, tb)


class ExceptionWithTraceback:
    """A picklable carrier for an exception raised in a worker.

    Args:
        exc: The exception, with its ``__traceback__`` still attached.
    """

    def __init__(self, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.exc = exc
        self.tb = f'\n"""\n{text}"""'

    def __reduce__(self) -> tuple[Any, tuple[Any, str]]:
        # Reduced here, not by the pickler: a library that registers its own
        # reducer for every exception type in copyreg (tblib, which Dask
        # installs) would otherwise decide how a task's exception travels,
        # and loses attributes such as SystemExit.code.
        reduced = self.exc.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        if isinstance(reduced, tuple) and 2 <= len(reduced) <= 3:
            return _rebuild_reduced, (reduced, self.tb)
        return _rebuild_exc, (self.exc, self.tb)


def picklable_exception(exc: BaseException) -> ExceptionWithTraceback:
    """Wrap ``exc`` so that it pickles with its traceback, whatever it holds.

    An exception whose own state cannot be pickled (it holds a lock, a
    socket, a lambda) is replaced by a :class:`RuntimeError` that names it,
    so the parent learns what failed instead of seeing a pickling error.

    Args:
        exc: The exception raised by the task.

    Returns:
        A carrier that unpickles into the exception with ``__cause__`` set.
    """
    carrier = ExceptionWithTraceback(exc)
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception as why:
        replacement = RuntimeError(
            f"the task raised {type(exc).__qualname__}: {exc!s}, "
            f"which cannot be sent back to the caller ({why!r})"
        )
        replacement.__traceback__ = exc.__traceback__
        carrier = ExceptionWithTraceback(replacement)
        carrier.tb = ExceptionWithTraceback(exc).tb
    return carrier
