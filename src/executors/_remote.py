"""Carry a task's exception and its traceback across a process boundary.

Tracebacks do not pickle. A worker wraps the exception in
:class:`ExceptionWithTraceback`; unpickling it in the parent rebuilds the
original exception (same type, same args) with the worker's formatted
traceback chained as ``__cause__``, exactly as ``concurrent.futures.process``
does, so ``traceback.print_exception`` shows where the task failed.

That ``__cause__`` is an instance of both stdlib classes for the same thing
(``multiprocessing.pool.RemoteTraceback`` and
``concurrent.futures.process._RemoteTraceback``), so code and tests written
for either pool recognise it. A result the worker could not pickle is marked
on it (:func:`result_not_sent`): ``executors.Pool`` raises it as the
stdlib's ``MaybeEncodingError``.
"""

from __future__ import annotations

import pickle
import reprlib
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # typeshed declares neither multiprocessing.pool.RemoteTraceback nor the
    # right argument type for _RemoteTraceback (a str, not a traceback).

    class _PoolRemoteTraceback(Exception):
        tb: str

        def __init__(self, tb: str) -> None: ...

    class _FuturesRemoteTraceback(Exception):
        tb: str

        def __init__(self, tb: str) -> None: ...

else:
    from concurrent.futures.process import (
        _RemoteTraceback as _FuturesRemoteTraceback,
    )
    from multiprocessing.pool import RemoteTraceback as _PoolRemoteTraceback

__all__ = [
    "ExceptionWithTraceback",
    "RemoteTraceback",
    "picklable_exception",
    "result_not_sent",
]

# How much of a result that could not be pickled its error shows: enough to
# recognise it, bounded so that a huge list does not make a huge message.
_UNSENT_REPR = reprlib.Repr()
_UNSENT_REPR.maxlist = _UNSENT_REPR.maxtuple = _UNSENT_REPR.maxset = 20
_UNSENT_REPR.maxdict = _UNSENT_REPR.maxfrozenset = _UNSENT_REPR.maxdeque = 20
_UNSENT_REPR.maxstring = _UNSENT_REPR.maxother = 200
_UNSENT_REPR_CHARS = 1000


class RemoteTraceback(_PoolRemoteTraceback, _FuturesRemoteTraceback):
    """The formatted traceback of an exception raised in another process.

    An instance of ``multiprocessing.pool.RemoteTraceback`` and of
    ``concurrent.futures.process._RemoteTraceback``, as the stdlib's pools
    chain to a task's exception.

    Attributes:
        tb: The traceback text.
        unsent_result: When the exception was raised while the worker
            pickled the task's result: that result's (shortened) repr;
            else ``None``.
    """

    unsent_result: str | None = None

    def __init__(self, tb: str, unsent_result: str | None = None) -> None:
        super().__init__(tb)
        self.tb = tb
        if unsent_result is not None:
            self.unsent_result = unsent_result

    def __str__(self) -> str:
        return self.tb


def _rebuild_exc(
    exc: BaseException, tb: str, unsent_result: str | None = None
) -> BaseException:
    exc.__cause__ = RemoteTraceback(tb, unsent_result)
    return exc


def _rebuild_reduced(
    reduced: tuple[Any, ...], tb: str, unsent_result: str | None = None
) -> BaseException:
    func, args, *rest = reduced
    exc: BaseException = func(*args)
    state = rest[0] if rest else None
    if state:
        exc.__setstate__(state)
    return _rebuild_exc(exc, tb, unsent_result)


class ExceptionWithTraceback:
    """A picklable carrier for an exception raised in a worker.

    Args:
        exc: The exception, with its ``__traceback__`` still attached.
    """

    def __init__(self, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.exc = exc
        self.tb = f'\n"""\n{text}"""'
        # Set by result_not_sent(): the exception is the pickler's, raised
        # while the worker sent the task's result back.
        self.unsent_result: str | None = None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Reduced here, not by the pickler: a library that registers its own
        # reducer for every exception type in copyreg (tblib, which Dask
        # installs) would otherwise decide how a task's exception travels,
        # and loses attributes such as SystemExit.code.
        reduced = self.exc.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        # The mark travels only when set, so the common pickle is unchanged.
        extra = () if self.unsent_result is None else (self.unsent_result,)
        if isinstance(reduced, tuple) and 2 <= len(reduced) <= 3:
            return _rebuild_reduced, (reduced, self.tb, *extra)
        return _rebuild_exc, (self.exc, self.tb, *extra)


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


def result_not_sent(exc: BaseException, value: object) -> ExceptionWithTraceback:
    """Wrap the error raised while a worker pickled a task's result.

    The caller gets the pickler's exception as the task's error, as from
    :func:`picklable_exception`; its ``__cause__`` also carries the
    result's shortened repr as ``unsent_result``, which is how
    ``executors.Pool`` knows to raise ``multiprocessing.pool.MaybeEncodingError``
    as ``multiprocessing.Pool`` does.

    Args:
        exc: The pickler's exception.
        value: The result that could not be pickled (a map chunk's list of
            values stands for the chunk, as in the stdlib's message).
    """
    carrier = picklable_exception(exc)
    carrier.unsent_result = _describe_unsent(value)
    return carrier


def _describe_unsent(value: object) -> str:
    # Imported here: _chunks imports this module, and only a failure needs
    # it. Not _map: that is the caller's side, and this runs in a worker.
    from ._chunks import ChunkResult

    if isinstance(value, ChunkResult):
        # A map's chunk: show its values, as the stdlib's message shows the
        # list of a chunk's results, not the carrier of our own making.
        value = value.values
    try:
        text = _UNSENT_REPR.repr(value)
    except Exception as why:
        # A repr that raises must not hide the pickling error itself.
        text = f"<{type(value).__qualname__} object; repr() raised {why!r}>"
    if len(text) > _UNSENT_REPR_CHARS:
        text = text[: _UNSENT_REPR_CHARS - 3] + "..."
    return text
