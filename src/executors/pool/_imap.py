"""``imap`` and ``imap_unordered``: the executor's lazy map, as the stdlib's.

:class:`InputReader` reads the caller's iterable chunk by chunk and holds
back its error; :class:`IMapIterator` hands out the map's results with the
stdlib's ``next(timeout)`` and raises that error in the stdlib's place.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._results import stdlib_error

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["IMapIterator", "InputReader"]

T = TypeVar("T")


class InputReader:
    """The caller's iterable, read in chunks, with its own error held back.

    ``multiprocessing.Pool.imap`` reports an exception raised by the input
    iterable from ``next()``, at the position of the chunk being read, after
    the results of every whole chunk before it. Reading chunk by chunk here,
    and stopping quietly at the error, gives the map exactly those chunks;
    the iterator raises the error once they are consumed.
    """

    def __init__(self, iterable: Iterable[Any], chunksize: int) -> None:
        self._iterable = iterable
        self._chunksize = chunksize
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[Any]:
        try:
            source = iter(self._iterable)
            while True:
                chunk = list(itertools.islice(source, self._chunksize))
                if not chunk:
                    return
                yield from chunk
        except Exception as exc:
            self.error = exc


class IMapIterator(Generic[T]):
    """What ``imap`` and ``imap_unordered`` return.

    A plain iterator, plus the stdlib's ``next(timeout)``. Dropping it, or
    calling :meth:`close`, cancels the work it has not started.
    """

    def __init__(
        self,
        results: Iterator[T],
        reader: InputReader,
        concurrent: bool,
    ) -> None:
        self._results = results
        self._reader = reader
        self._concurrent = concurrent
        self._exhausted = False
        # A next() that timed out goes on in a helper thread; the call after
        # it waits for the same item, so no result is skipped.
        self._next_in_flight: Future[T] | None = None
        self._lock = threading.Lock()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        return self.next()

    def next(self, timeout: float | None = None) -> T:
        """Return the next result.

        Args:
            timeout: Seconds to wait for it; ``None`` waits until it comes.
                A timeout leaves the iterator usable: the next call returns
                the same item.

        Raises:
            multiprocessing.TimeoutError: Not ready within ``timeout``.
            StopIteration: No result is left.
        """
        with self._lock:
            in_flight = self._next_in_flight
            if in_flight is None and (timeout is None or not self._concurrent):
                # The common case: advance the map right here, no thread.
                # (inline runs each task in the caller, so there is nothing
                # a timeout could stop.)
                return self._advance()
            if in_flight is None:
                in_flight = self._next_in_flight = Future()
                threading.Thread(
                    target=self._advance_into,
                    args=(in_flight,),
                    name="executors.Pool imap next",
                    daemon=True,
                ).start()
            try:
                value = in_flight.result(timeout)
            except FuturesTimeoutError:
                raise multiprocessing.TimeoutError from None
            finally:
                if in_flight.done():
                    self._next_in_flight = None
            return value

    def close(self) -> None:
        """Stop: cancel the work not started yet; later ``next()`` stops."""
        close = getattr(self._results, "close", None)
        if close is not None:
            close()
        self._exhausted = True

    def _advance_into(self, in_flight: Future[T]) -> None:
        try:
            in_flight.set_result(self._advance())
        except BaseException as exc:
            in_flight.set_exception(exc)

    def _advance(self) -> T:
        if self._exhausted:
            raise StopIteration
        try:
            return next(self._results)
        except StopIteration:
            self._exhausted = True
            error, self._reader.error = self._reader.error, None
            if error is not None:
                raise error from None
            raise
        except BaseException as exc:
            self._exhausted = True
            translated = stdlib_error(exc)
            if translated is exc:
                raise
            raise translated from exc
