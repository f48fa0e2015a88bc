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

import _thread
import copyreg
import io
import pickle
from collections import ChainMap
from collections.abc import Callable, Mapping
from multiprocessing.reduction import ForkingPickler
from typing import Any, Literal, SupportsIndex, overload

from . import _shm
from ._bootstrap import INITIALIZER_FAILED_EXITCODE, WorkerBootstrap, initializer_error
from ._remote import picklable_exception, result_not_sent
from ._workers._context import after_task

__all__ = [
    "INITIALIZER_FAILED_EXITCODE",
    "OUT_OF_BAND_BYTES",
    "PICKED",
    "Outcome",
    "Pickled",
    "PickledCall",
    "WorkerBootstrap",
    "decode",
    "dump_error",
    "dumps",
    "dumps_apart",
    "dumps_through",
    "initializer_error",
    "loads",
    "place",
    "place_apart",
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


#: ``dumps(..., holder=PICKED)``: a message sent once (an outcome), whose
#: shared memory is free again once its receiver has taken it.
PICKED: Any = object()


def dumps(
    obj: object,
    buffer_callback: Callable[[Any], Any] | None = None,
    reducers: Mapping[type, Callable[[Any], Any]] | None = None,
    *,
    shm_threshold: int | None = None,
    holder: object = None,
) -> bytes:
    """Pickle ``obj`` as ``multiprocessing`` would, at the highest protocol.

    With ``buffer_callback``, large buffers go to it instead of the bytes,
    as with :func:`pickle.dumps`; ``reducers`` take precedence over the
    shared table.

    Args:
        shm_threshold: Out-of-band buffers of at least this many bytes
            travel through shared memory (:mod:`executors._shm`), the
            rest in the bytes; ``None``: everything in the bytes. If shared
            memory cannot be had, everything goes in the bytes.
        holder: How long the shared memory stays the receiver's: ``None``,
            while the returned bytes live (a payload the caller may send
            again for a retry); :data:`PICKED`, until a receiver has
            unpickled it (an outcome); any other object, while it lives.
    """
    if shm_threshold is None or buffer_callback is not None:
        return _dump(obj, buffer_callback, reducers)
    return dumps_through(
        lambda callback: _dump(obj, callback, reducers), shm_threshold, holder
    )


def dumps_through(
    pickle_with: Callable[[Callable[[Any], Any] | None], bytes],
    shm_threshold: int,
    holder: object = None,
) -> bytes:
    """Pickle with large buffers in shared memory, for a pickler of one's own.

    Args:
        pickle_with: Pickles the object with the given ``buffer_callback``
            (called twice if shared memory cannot be had: then ``None``).
        shm_threshold: As for :func:`dumps`.
        holder: As for :func:`dumps`.
    """
    big: list[memoryview] = []
    data = pickle_with(_keeping_apart(shm_threshold, big))
    if not big:
        return data
    message = place(data, big, holder)
    if message is None:
        big.clear()
        return pickle_with(None)
    return message


def place(
    data: bytes, buffers: list[memoryview], holder: object = None
) -> bytes | None:
    """Move a pickle's out-of-band ``buffers`` to one shared memory segment.

    Returns the message (the pickle and the segment's refs, for
    :func:`loads` or :func:`executors._shm.unpack`), held as :func:`dumps`
    says of ``holder``; ``None`` if shared memory cannot be had (after one
    warning per process).
    """
    # An outcome (a worker's) is copied through the worker's mapping, the
    # fastest way; a call (the caller's) with pwrite, so that the caller's
    # resident memory holds the user's arrays and their results, not also a
    # copy of every argument it sent.
    shipment = _shm.ship(buffers, resident=holder is PICKED)
    if shipment is None:
        return None
    message = _shm.pack(data, shipment.refs)
    if holder is PICKED:
        shipment.until_picked()
    elif holder is not None:
        shipment.held_by(holder)
    else:
        held = _Message(message)
        held.shipment = shipment
        held.sources = buffers
        return held
    return message


#: :func:`dumps_apart` keeps in the pickle the buffers smaller than this: a
#: buffer apart costs a length field and an iovec entry, worth it only when
#: it saves a copy of real size.
OUT_OF_BAND_BYTES = 64 * 1024


def dumps_apart(
    obj: object, shm_threshold: int | None = None
) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj`` at protocol 5, its large buffers apart, for a wire of one's own.

    Buffers of at least :data:`OUT_OF_BAND_BYTES` (or ``shm_threshold``, if
    smaller, so that :func:`place_apart` can move them all) leave the pickle;
    the wire writes them from the object's own memory (the queue's
    ``writev``). Pickle's own reducers only: this is the fast path.
    """
    buffers: list[memoryview] = []
    cutoff = OUT_OF_BAND_BYTES
    if shm_threshold is not None and shm_threshold < cutoff:
        cutoff = shm_threshold
    keep_apart = _keeping_apart(cutoff, buffers)
    return pickle.dumps(obj, protocol=5, buffer_callback=keep_apart), buffers


def _keeping_apart(
    cutoff: int, apart: list[memoryview]
) -> Callable[[pickle.PickleBuffer], bool]:
    """A ``buffer_callback`` keeping buffers of ``cutoff`` bytes or more in ``apart``.

    It returns True (pickle the buffer in-band) for the others, and for a
    buffer that is not contiguous, which pickle then copies or refuses as it
    would without a callback.
    """

    def keep_apart(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:
            return True
        if raw.nbytes < cutoff or not raw.nbytes:
            return True
        apart.append(raw)
        return False

    return keep_apart


def place_apart(
    data: bytes,
    buffers: list[memoryview],
    shm_threshold: int | None,
    holder: object = None,
) -> tuple[bytes, list[memoryview]]:
    """:func:`dumps_apart`'s output with its buffers in shared memory, if worth it.

    When one buffer is at least ``shm_threshold``: the message and no
    buffers (see :func:`place`). Otherwise, or without shared memory,
    ``data`` and ``buffers`` unchanged.
    """
    if (
        not buffers
        or shm_threshold is None
        or not any(b.nbytes >= shm_threshold for b in buffers)
    ):
        return data, buffers
    message = place(data, buffers, holder)
    return (data, buffers) if message is None else (message, [])


class _Message(bytes):
    """Bytes that hold a shared memory segment while they live.

    bytes cannot be weakly referenced: the segment is let go in ``__del__``.
    It pickles as plain bytes.
    """

    shipment: _shm.Shipment
    #: The caller's buffers it was copied from, for another attempt.
    sources: list[memoryview]

    def __del__(self) -> None:
        try:
            self.shipment.release()
        except KeyboardInterrupt:
            # Dropped by the interpreter in __del__: the main thread gets it.
            _thread.interrupt_main()

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        return bytes, (bytes(self),)

    def for_another_attempt(self) -> bytes:
        """The same call on a segment of its own, for a retry.

        The receiver's values live on the segment's pages, so an attempt
        that wrote into its arguments wrote there: the next attempt gets a
        fresh copy of the caller's buffers, as the queue backend places
        each attempt (and as a pickle made for each attempt would be).
        """
        data = bytes(_shm.pickle_of(self))
        shipment = _shm.ship(self.sources, resident=False)
        if shipment is None:  # no shared memory now: the pipe carries them
            return _dump(pickle.loads(data, buffers=self.sources), None, None)
        again = _Message(_shm.pack(data, shipment.refs))
        again.shipment = shipment
        again.sources = self.sources
        return again


def loads(data: bytes) -> Any:
    """Unpickle what :func:`dumps` made, its buffers in shared memory or not."""
    if data[:4] == _shm.MAGIC:
        return _shm.loads(data)
    return pickle.loads(data)


def _dump(
    obj: object,
    buffer_callback: Callable[[Any], Any] | None,
    reducers: Mapping[type, Callable[[Any], Any]] | None,
) -> bytes:

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
    shm_threshold: int | None = None,
) -> tuple[bool, bytes]: ...


@overload
def run_call(
    payload: bytes,
    buffers_apart: bool,
    reducers: Mapping[type, Callable[[Any], Any]] | None = None,
    shm_threshold: int | None = None,
) -> Outcome: ...


def run_call(
    payload: bytes,
    buffers_apart: bool = False,
    reducers: Mapping[type, Callable[[Any], Any]] | None = None,
    shm_threshold: int | None = None,
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
        shm_threshold: The value's buffers of at least this many bytes go
            back through shared memory (the caller's ``shm_threshold``);
            ``buffers_apart`` then applies to none.
    """
    try:
        try:
            fn, args, kwargs = loads(payload)
            value = fn(*args, **kwargs)
        except BaseException as exc:
            return False, dump_error(exc)
        # The arguments' shared memory is let go before the value is pickled.
        del fn, args, kwargs
        try:
            if shm_threshold is not None:
                return True, dumps(
                    value, reducers=reducers, shm_threshold=shm_threshold, holder=PICKED
                )
            if buffers_apart:
                return True, Pickled.of(value, reducers)
            return True, dumps(value, reducers=reducers)
        except BaseException as exc:
            # The pickler's error is the task's, marked as a result that could
            # not be sent (executors.Pool raises it as MaybeEncodingError).
            return False, dumps(result_not_sent(exc, value))

    finally:
        # The task's log records reach the caller before its outcome, and
        # the worker learns whether it must be recycled (issue 26).
        after_task()


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
        return ok, loads(data)
    except BaseException as exc:
        return False, exc


class Pickled:
    """A value pickled at protocol 5 with its large buffers kept apart.

    Pickled to bytes, and the bytes pickled again by the library, a 5 MB
    array is copied twice more on each side than the value itself would be.
    Here the value's pickle holds no buffer: the library's pickler copies
    each one once, straight from the value, into its message, and the
    caller unpickles the value over the copies it received.

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
    the others. With ``shm_threshold``, its large buffers go through shared
    memory held while this object lives (a retry pickles it again).
    """

    __slots__ = ("__weakref__", "call", "shm_threshold")

    def __init__(
        self,
        call: tuple[Any, tuple[Any, ...], dict[str, Any]],
        shm_threshold: int | None = None,
    ) -> None:
        self.call = call
        self.shm_threshold = shm_threshold

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        data = dumps(self.call, shm_threshold=self.shm_threshold, holder=self)
        return bytes, (bytes(data) if type(data) is not bytes else data,)
