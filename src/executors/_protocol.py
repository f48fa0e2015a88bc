"""The contract every backend keeps, written once.

Backends document only where they differ; the conformance suite in
:mod:`executors.testing` checks each item below on every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._capabilities import Capabilities

__all__ = ["Executor"]

T = TypeVar("T")


@runtime_checkable
class Executor(Protocol):
    """An object that runs callables asynchronously, whatever the backend.

    Every executor that :func:`executors.create` returns satisfies this
    protocol *and* subclasses :class:`concurrent.futures.Executor`, so code
    written for the stdlib (``loop.run_in_executor``,
    ``dask.compute(scheduler=...)``) accepts it unchanged.

    Attributes:
        backend: The registered name of the backend, such as ``"process"``.
        capabilities: Declared behaviour that differs between backends.
    """

    backend: str
    capabilities: Capabilities

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` and return its future.

        The future is always a stdlib :class:`concurrent.futures.Future`, so
        ``concurrent.futures.wait``, ``as_completed`` and
        ``asyncio.wrap_future`` work on every backend. Keyword arguments
        named ``fn`` or ``self`` pass through to the task.

        A task's own exception comes out of ``result()`` unchanged (same type
        and args), with the worker's traceback as ``__cause__`` when the task
        ran in another process. A failure of the executor itself (a dead
        worker, a failed initializer) raises a subclass of
        :class:`concurrent.futures.BrokenExecutor` instead.

        Args:
            fn: The callable to run. Process backends send it with
                cloudpickle, so lambdas and closures work.
            *args: Positional arguments for ``fn``.
            **kwargs: Keyword arguments for ``fn``.

        Returns:
            A future for the result. ``cancel()`` succeeds while the task is
            queued and fails once it runs; ``result(timeout)`` raises
            :class:`TimeoutError` while the task is unfinished.

        Raises:
            TypeError: ``fn`` is not callable.
            concurrent.futures.BrokenExecutor: The executor is broken
                (checked first).
            RuntimeError: ``"cannot schedule new futures after shutdown"``,
                or ``"... after interpreter shutdown"`` from an atexit hook.
        """
        ...

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[T]:
        """Return an iterator equal to ``map(fn, *iterables)``, run in parallel.

        Results come in input order. Several iterables stop at the shortest,
        as builtin ``map`` does. When a task fails, the iterator yields every
        earlier result and then raises that task's exception; closing the
        iterator early cancels the work it has not started.

        Args:
            fn: The callable to apply.
            *iterables: The inputs.
            timeout: Seconds, counted from the call, after which ``next()``
                raises :class:`TimeoutError` if the next result is not ready.
            chunksize: Items sent to a worker as one task. ``None`` picks it:
                one item per task on short inputs; on long eager inputs,
                chunks that shrink towards the end (down to half the first)
                so the tail is balanced; in a lazy map, chunks that grow from
                one item while tasks prove cheap. ``chunksize=1`` forces
                per-item tasks.
            buffersize: ``None`` keeps the stdlib's semantics: the whole input
                is read and every task submitted at the call. ``N`` reads the
                input lazily: at most ``N`` items are read and not yet yielded
                at any time, so infinite iterables work and memory stays
                bounded.
            progress: Show a tqdm progress bar counting completed items
                (needs ``pip install "executors[progress]"``).

        Returns:
            An iterator over the results.

        Raises:
            ValueError: ``chunksize`` or ``buffersize`` is less than 1, or
                ``timeout`` is negative.
            RuntimeError: The executor is shut down.
        """
        ...

    def map_unordered(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[T]:
        """Like :meth:`map`, but yield each result as soon as it is ready.

        The arguments and their bounds are those of :meth:`map`; only the
        order of the results differs.
        """
        ...

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Release the executor's workers; idempotent.

        Args:
            wait: ``True`` returns once every submitted task has finished and
                every worker has exited. ``False`` returns at once; submitted
                work still completes in the background.
            cancel_futures: Cancel every future whose task has not started.
        """
        ...

    def __enter__(self) -> Self:
        """Return the executor itself."""
        ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        """Shut down with ``wait=True``."""
        ...
