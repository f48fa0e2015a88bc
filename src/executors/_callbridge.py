"""The one bridge between a library and a :class:`~executors._callqueue.CallQueue`.

A mixin of :class:`~executors._callqueue.CallQueue`: how a call becomes
what a library runs (pickled now, so that a pickling error fails only its
own future, or pickled by the library's own sending thread), and how what
the library hands back (a worker's outcome, or the library's own future)
settles the call: decoded in the settling thread, translated, settled.
Every backend goes through these instead of a copy of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any

from ._call import Call, dropped_by_library
from ._chunks import Chunk, ChunkResult, run_chunk
from ._futures import Future as OurFuture
from ._futures import settle
from ._outcome import Outcome, PickledCall, decode, dumps

__all__ = ["LibraryBridge"]


class LibraryBridge:
    """Pickling calls, decoding outcomes, following a library's futures."""

    #: Out-of-band buffers of at least this many bytes travel through
    #: shared memory (set by a backend whose workers take them).
    shm_threshold: int | None

    # CallQueue's own methods this part calls (declared for the type checker).
    if TYPE_CHECKING:

        def submit(
            self, future: Future[Any], payload: Any, *, chunk: bool = False
        ) -> Call: ...

        def settle(
            self,
            call: Call,
            value: Any = None,
            error: BaseException | None = None,
            *,
            retry: bool = True,
            release: bool = True,
        ) -> bool: ...

    def submit_pickled(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        chunk: bool = False,
        wrap: Callable[[bytes], Any] | None = None,
    ) -> Future[Any]:
        """Pickle ``fn(*args, **kwargs)`` now and queue it; return its future.

        For a library that runs calls in other processes. A call that fails
        to pickle fails its own future with the pickling error at once, and
        the library never sees it: the same on every process backend.

        Args:
            wrap: Turns the pickled bytes into the payload ``launch``
                expects; default: the bytes.
        """
        future: OurFuture[Any] = OurFuture()
        try:
            payload = dumps((fn, args, kwargs), shm_threshold=self.shm_threshold)
        except Exception as exc:
            settle(future, error=exc)
            return future
        self.submit(future, payload if wrap is None else wrap(payload), chunk=chunk)
        return future

    def submit_chunk(self, fn: Callable[..., Any], chunk: Chunk) -> Future[ChunkResult]:
        """Queue one chunk of a ``map`` as a :class:`~executors._outcome.PickledCall`.

        For a library with its own sending thread, which pickles the chunk:
        the first chunk is on its way while the caller submits the others,
        and one that fails to pickle fails at its position in the map.
        """
        future: OurFuture[ChunkResult] = OurFuture()
        self.submit(
            future,
            PickledCall((run_chunk, (fn, chunk), {}), self.shm_threshold),
            chunk=True,
        )
        return future

    def settle_outcome(self, call: Call, outcome: Outcome) -> None:
        """Settle ``call`` with a worker's outcome (see :mod:`executors._outcome`).

        Decoded here, in the settling thread: a result that fails to
        unpickle fails this call only, with the unpickling error.
        """
        ok, value = decode(outcome)
        if ok:
            self.settle(call, value)
        else:
            self.settle(call, error=value)

    def settle_when_done(
        self,
        call: Call,
        theirs: Future[Any],
        translate: Callable[[BaseException], BaseException] | None = None,
        *,
        outcome: bool = False,
        dropped: Callable[[], BaseException] = dropped_by_library,
        failed: Callable[[Call, BaseException], None] | None = None,
    ) -> None:
        """Settle ``call`` with the outcome of a library's own future.

        For libraries that hand out futures (the stdlib pools, loky): the
        outcome is copied when theirs completes, in whatever thread the
        library completes it (nothing may escape into that thread).
        ``call.handle`` keeps theirs until then, so a backend can still
        reach it (to cancel or kill).

        Args:
            call: A launched call.
            theirs: The library's future for it.
            translate: Turns the library's exception into the one ours gets.
            outcome: Theirs holds a worker's :data:`~executors._outcome.
                Outcome`, decoded as :meth:`settle_outcome` does.
            dropped: The error of a call whose future the library cancelled
                (only a library that drops accepted work does).
            failed: Settles the call with the library's exception instead
                (a backend that may break the executor for it).
        """
        call.handle = theirs
        theirs.add_done_callback(
            functools.partial(
                self._copy_outcome, call, translate, outcome, dropped, failed
            )
        )

    def _copy_outcome(
        self,
        call: Call,
        translate: Callable[[BaseException], BaseException] | None,
        outcome: bool,
        dropped: Callable[[], BaseException],
        failed: Callable[[Call, BaseException], None] | None,
        theirs: Future[Any],
    ) -> None:
        # exception() raises for a cancelled future: two looks at theirs
        # (two locks) instead of three. Not result() alone: the stdlib's
        # returns None for an exception that is falsy.
        try:
            error: BaseException | None = theirs.exception()
        except CancelledError:
            error = dropped()
            if failed is None:
                self.settle(call, error=error)
                return
        if error is not None:
            if failed is not None:
                failed(call, error)
            else:
                self.settle(
                    call, error=error if translate is None else translate(error)
                )
        elif outcome:
            self.settle_outcome(call, theirs.result())
        else:
            self.settle(call, theirs.result())
