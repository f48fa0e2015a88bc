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
    decode(outcome) ◀────────────── (ok, bytes), or (ok, Pickled): the
                                      value's buffers apart, for a library
                                      that pickles at protocol 5
      loads under BaseException: a result that cannot be unpickled here
      (even by raising SystemExit) fails this future alone

The library in between (``multiprocessing.Pool``, Dask, loky, the stdlib's
pool) only ever moves ``bytes`` (a :class:`Pickled` is bytes and plain
buffers), so none of its threads can die on a user's pickle. Pickling uses
``ForkingPickler``'s reducers, so sockets and connections travel as they do
through ``multiprocessing``.

Worker start-up is shared too, in :mod:`executors._bootstrap` (its names
are re-exported here for the modules that import them from this one).
"""

from __future__ import annotations

import copyreg
import io
import pickle
from collections import ChainMap
from collections.abc import Callable, Mapping
from multiprocessing.reduction import ForkingPickler
from typing import Any, Literal, SupportsIndex, overload

from ._bootstrap import INITIALIZER_FAILED_EXITCODE, WorkerBootstrap, initializer_error
from ._remote import picklable_exception, result_not_sent

__all__ = [
    "INITIALIZER_FAILED_EXITCODE",
    "Outcome",
    "Pickled",
    "PickledCall",
    "WorkerBootstrap",
    "decode",
    "dump_error",
    "dumps",
    "initializer_error",
    "run_call",
]

#: What a worker sends back: ``(True, pickled value)`` or
#: ``(False, pickled exception)``; the value as :class:`Pickled` when the
#: worker was asked to keep its buffers apart.
Outcome = tuple[bool, "bytes | Pickled"]


class _Pickler(pickle.Pickler):
    """ForkingPickler's reducers (connections, sockets), in a shared table.

    ForkingPickler copies its reducer table on every instantiation, which
    costs more than pickling a small task; this class shares one table,
    rebuilt when a reducer is registered.
    """

    dispatch_table: dict[Any, Any] = {}
    table_sizes = (-1, -1)


class _PicklerWith(_Pickler):
    """:class:`_Pickler` with a table of its own, given at creation."""

    def __init__(
        self,
        file: io.BytesIO,
        table: Mapping[Any, Any],
        buffer_callback: Callable[[Any], Any] | None,
    ) -> None:
        # pickle.Pickler reads dispatch_table once, in __init__, as an
        # attribute: this instance's shadows the shared class table.
        self.dispatch_table = table  # type: ignore[assignment]
        super().__init__(file, pickle.HIGHEST_PROTOCOL, buffer_callback=buffer_callback)


def dumps(
    obj: object,
    buffer_callback: Callable[[Any], Any] | None = None,
    reducers: Mapping[type, Callable[[Any], Any]] | None = None,
) -> bytes:
    """Pickle ``obj`` as ``multiprocessing`` would, at the highest protocol.

    With ``buffer_callback``, large buffers go to it instead of the bytes,
    as with :func:`pickle.dumps`; ``reducers`` take precedence over the
    shared table.
    """
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
    if reducers:
        table = ChainMap(dict(reducers), _Pickler.dispatch_table)
        _PicklerWith(buffer, table, buffer_callback).dump(obj)
    else:
        _Pickler(buffer, pickle.HIGHEST_PROTOCOL, buffer_callback=buffer_callback).dump(
            obj
        )
    return buffer.getvalue()


def dump_error(exc: BaseException) -> bytes:
    """Pickle a task's exception with the worker's traceback attached."""
    try:
        return dumps(picklable_exception(exc))
    except Exception as why:  # pragma: no cover - picklable_exception checks
        return dumps(RuntimeError(f"{type(exc).__qualname__}: {exc!s} ({why!r})"))


@overload
def run_call(
    payload: bytes,
    buffers_apart: Literal[False] = False,
    reducers: Mapping[type, Callable[[Any], Any]] | None = None,
) -> tuple[bool, bytes]: ...


@overload
def run_call(
    payload: bytes,
    buffers_apart: bool,
    reducers: Mapping[type, Callable[[Any], Any]] | None = None,
) -> Outcome: ...


def run_call(
    payload: bytes,
    buffers_apart: bool = False,
    reducers: Mapping[type, Callable[[Any], Any]] | None = None,
) -> Outcome:
    """Run one pickled ``(fn, args, kwargs)`` in a worker; never raise.

    Args:
        payload: The pickled call.
        buffers_apart: Return the value as :class:`Pickled`, the buffers
            it hands to pickle (a NumPy array's data) not copied into its
            pickle. For a library that pickles the outcome at protocol 5
            (loky): it then copies each buffer once.
        reducers: Extra reducers for the value, as a library's own pool
            would apply to results (joblib's for memory-mapped arrays).
    """
    try:
        fn, args, kwargs = pickle.loads(payload)
        value = fn(*args, **kwargs)
    except BaseException as exc:
        return False, dump_error(exc)
    try:
        if buffers_apart:
            return True, Pickled.of(value, reducers)
        return True, dumps(value, reducers=reducers)
    except BaseException as exc:
        # The pickler's error is the task's, marked as a result that could
        # not be sent (executors.Pool raises it as MaybeEncodingError).
        return False, dumps(result_not_sent(exc, value))


def decode(outcome: Outcome) -> tuple[bool, Any]:
    """Unpickle a worker's outcome in the caller; a failure is the task's.

    Returns:
        ``(True, value)``, or ``(False, exception)`` for the task's own
        exception and for one raised while unpickling (``SystemExit``
        included: it must fail one future, not the thread decoding it).
    """
    try:
        ok, data = outcome
        if isinstance(data, Pickled):
            return ok, pickle.loads(data.data, buffers=data.buffers)
        return ok, pickle.loads(data)
    except BaseException as exc:
        return False, exc


class Pickled:
    """A value pickled at protocol 5 with its large buffers kept apart.

    Pickled to bytes, and the bytes pickled again by the library, a 5 MB
    array is copied twice more on each side than the value itself would be.
    Here the value's pickle holds no buffer: the library's pickler copies
    each one once, straight from the value, into its message, and the
    caller unpickles the value over the copies it received. (On joblib's
    loky pool this took a 5 MB result from 5.5 to 3.0 ms.)

    A pickler below protocol 5 (``multiprocessing`` before Python 3.14)
    cannot carry a buffer as such: it gets writable ones as ``bytearray``,
    so that a NumPy array comes back writable, as from any pickle.
    """

    __slots__ = ("buffers", "data")

    def __init__(self, data: bytes, buffers: list[Any]) -> None:
        self.data = data
        self.buffers = buffers

    @classmethod
    def of(
        cls,
        value: object,
        reducers: Mapping[type, Callable[[Any], Any]] | None = None,
    ) -> Pickled:
        buffers: list[pickle.PickleBuffer] = []
        data = dumps(value, buffers.append, reducers)
        return cls(data, buffers)

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, tuple[Any, ...]]:
        if int(protocol) >= 5:
            return Pickled, (self.data, self.buffers)
        copies = [_copy(buffer) for buffer in self.buffers]
        return Pickled, (self.data, copies)


def _copy(buffer: Any) -> bytes | bytearray:
    view = memoryview(buffer)
    return bytes(view) if view.readonly else bytearray(view)


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
