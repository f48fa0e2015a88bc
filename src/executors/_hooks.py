"""The interface between :class:`~executors._base.BaseExecutor` and a backend.

This class is the one list of what a backend implements; the docs
(``docs/architecture.md``, the plugin guide) repeat its members, and a test
checks that they agree. :class:`~executors._base.BaseExecutor` writes
everything else once on top of it: the guards of ``submit``, ``map``,
``max_pending``, task options, ``shutdown``, Ctrl-C, ``terminate_workers`` /
``kill_workers``, ``kill_task`` (through the call queue's ``stop``), the
exit hook and "dropped without ``shutdown()``".

Two hooks are required (``_submit``, ``_shutdown``); the others have
defaults that suit a backend whose workers cannot be stopped (threads).
Most backends put a :class:`~executors._callqueue.CallQueue` in front of
their library and set ``self._calls``: its launcher (``launch`` and
``stop``) is then the per-call half of this interface, and
``_broken_error`` and ``kill_task`` work through it.
"""

from __future__ import annotations

import functools
import signal
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, ClassVar, TypeVar

from . import _map
from ._callqueue import CallQueue
from ._capabilities import Capabilities
from ._errors import ExecutorInterruptedError
from ._lifecycle import ending_on_keyboard_interrupt, killing_after_grace

__all__ = ["HOOKS", "BackendHooks"]

T = TypeVar("T")


class BackendHooks:
    """What a backend supplies; every hook is called by the base class only.

    The abstract hooks are enforced through :class:`~executors._base.
    BaseExecutor`, whose metaclass is :class:`abc.ABCMeta`.
    """

    #: The call queue in front of the library, for backends that keep one:
    #: task control (timeouts, retries, kill_task, terminate_workers) works
    #: through it.
    _calls: CallQueue | None = None
    _max_workers: int
    backend: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    @abstractmethod
    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        """Start one task and return its stdlib future. Called under the lock."""

    @abstractmethod
    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        """Release the workers. Called on every ``shutdown()``; make it idempotent.

        Also called by the exit hook and by ``terminate_workers()`` (with
        ``cancel_futures=True``, once the running calls have failed).
        """

    def _broken_error(self) -> BaseException | None:
        """Return the exception ``submit`` raises once the executor is broken.

        By default, the call queue's (``self._calls``), if there is one.
        """
        calls = self._calls
        return None if calls is None else calls.broken_error()

    def _interrupt(self) -> None:
        """Stop running tasks early: a ``with`` block is leaving on Ctrl-C.

        ``shutdown(wait=True, cancel_futures=True)`` follows, and sends
        SIGKILL through :meth:`_signal_workers` to workers still there
        after a grace. By default, for a backend that declares
        ``capabilities.terminates_workers``: the call queue cancels what is
        queued and fails what runs with
        :class:`~executors.ExecutorInterruptedError`, then the workers get
        SIGTERM, so the program exits without waiting for its tasks.
        Elsewhere (threads) nothing is stopped here: the shutdown cancels
        the queued calls and waits for the running ones.
        """
        if not self.capabilities.terminates_workers:
            return
        calls = self._calls
        if calls is not None:
            # Ending: the queue, idle once the running calls have failed,
            # leaves the workers to the signal (a graceful release would
            # wait for the tasks).
            calls.close(cancel_futures=True, ending=True)
            calls.fail_launched(
                functools.partial(ExecutorInterruptedError.stopped, self.backend)
            )
        self._signal_workers(signal.SIGTERM)

    def _signal_workers(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every worker process (``terminate_workers``).

        Optional; a backend whose workers are processes implements it and
        declares ``capabilities.terminates_workers``. Called after the
        running calls have failed and the queued ones were cancelled, and
        again with SIGKILL for workers still alive 3 s after a SIGTERM: it
        must reach the workers the library is waiting for.
        """

    def _start(self) -> None:
        """Start the workers, if the backend starts them lazily.

        Optional. Called before every submit and map, *outside* the lock, so
        a slow start (a Dask cluster takes seconds) never holds up a
        concurrent ``shutdown(wait=False)``. Must be cheap once started and
        raise the errors of ``_check_open`` if the executor is closed.
        """

    def _in_own_task(self) -> bool:
        """True when called from a task of this executor, in its own thread.

        Optional; a backend whose tasks run in threads of the caller's
        process (``thread``, ``inline``) says so. A ``submit`` from such a
        task at the ``max_pending`` limit raises instead of waiting: the
        waiting task would hold a worker that the futures it waits for may
        need.
        """
        return False

    def _submit_chunk(
        self, fn: Callable[..., Any], chunk: _map.Chunk
    ) -> Future[_map.ChunkResult]:
        """Start one chunk of a ``map``. Called under the lock.

        Optional: by default, one task that loops over the chunk. A backend
        that can run a chunk better overrides it (``queue``).
        """
        return self._submit(_map.run_chunk, (fn, chunk), {})

    def _map_workers(self) -> int:
        """How many workers ``map`` spreads its chunks over.

        Optional: by default ``max_workers``; a cluster that grows says how
        many it has now (``dask``).
        """
        return self._max_workers

    @classmethod
    def _workers_start_method(cls, options: Mapping[str, Any]) -> str | None:
        """How this backend's workers start, given ``create()``'s options.

        Optional: ``"spawn"``, ``"forkserver"``, ``"fork"``, or ``None`` for
        workers that are not started from this script (a remote cluster).
        ``create()`` uses it to refuse, once and naming the line, a script
        that would create executors again in every worker it starts
        (:mod:`executors._mainmodule`). By default ``"unknown"``: only the
        worker's own check applies.
        """
        return "unknown"

    def close_at_exit(self) -> None:
        """Called once when the interpreter exits (see :mod:`executors._lifecycle`).

        Optional: the exit policy, written once here. As the stdlib pools
        do, the work already submitted is finished and the workers are
        released; a program ending on an unhandled Ctrl-C
        stops its running tasks and drops the queued ones instead. The
        executor is not marked shut down, so a submit from an ``atexit``
        hook raises the stdlib's "after interpreter shutdown" error. A
        Ctrl-C while the hook waits for the work stops it the same way: the
        ``KeyboardInterrupt`` must not escape, or the libraries' own exit
        hooks (loky's) would be skipped and the interpreter would wait for
        workers never told to stop.
        """
        if not ending_on_keyboard_interrupt():
            try:
                self._shutdown(wait=True, cancel_futures=False)
                return
            except KeyboardInterrupt:
                pass
        self._interrupt()
        with killing_after_grace(self._signal_workers):
            self._shutdown(wait=True, cancel_futures=True)

    def _engine_map(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
        timeout: float | None,
        chunksize: int | None,
        buffersize: int | None,
        progress: bool,
    ) -> Iterator[Any] | None:
        """Run a map on the library's own engine instead of the shared map.

        Optional; the default ``None`` means "use the shared map". Called
        with validated arguments, after the open check, outside the lock,
        by ``map``, ``map_unordered`` and :mod:`executors.aio` alike. The
        iterator returned must keep the map contract (results in order for
        ``ordered``, a failing item raised at its position, ``close()``
        cancels the rest).
        """
        return None


#: The hooks, in the order above: the list the docs must repeat.
HOOKS: tuple[str, ...] = tuple(
    name
    for name, member in vars(BackendHooks).items()
    if not name.startswith("__")
    and (callable(member) or isinstance(member, classmethod))
)
