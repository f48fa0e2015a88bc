"""The base class every backend builds on.

:class:`BaseExecutor` owns what is the same everywhere: the guards of
``submit`` (broken, then shut down, then the work, under one lock), argument
validation, ``max_pending``, task options, ``map`` and ``map_unordered``
(through :mod:`executors._map`), idempotent ``shutdown``, Ctrl-C,
``terminate_workers`` / ``kill_workers``, ``kill_task``, the exit hook and
the context manager. A backend implements the hooks of
:class:`executors._hooks.BackendHooks`, the one list of them. Every
backend's constructor takes ``max_pending=`` (the bound on unfinished
``submit`` futures) through this class, without declaring it
(:mod:`executors._pending`). The futures a backend returns are
:class:`executors._futures.Future` objects, settled through
:func:`executors._futures.settle`, usually by way of a
:class:`executors._callqueue.CallQueue` in front of the library.
"""

from __future__ import annotations

import inspect
import signal
import threading
import weakref
from abc import ABCMeta
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from . import _map
from ._capabilities import Capabilities
from ._control import (
    TaskOptions,
    WithOptions,
    submitting,
    submitting_options,
    unwrap_options,
)
from ._errors import TaskKilledError, WorkersTerminatedError
from ._futures import (
    add_internal_callback,
    drain_callbacks,
    fail_futures,
    notify_cancelled,
)
from ._hooks import BackendHooks
from ._lifecycle import (
    close_at_exit,
    close_when_collected,
    interpreter_exiting,
    killing_after_grace,
)
from ._options import check_callable, check_map_arguments
from ._pending import PendingSlots, taking_max_pending
from ._serialize import portable
from ._share import Shared

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BaseExecutor", "fail_futures", "notify_cancelled"]

T = TypeVar("T")


class BaseExecutor(BackendHooks, futures.Executor, metaclass=ABCMeta):
    """Shared machinery of every backend; subclasses supply the hooks.

    Subclasses set the class attributes ``backend`` and ``capabilities`` and
    call ``super().__init__(max_workers=...)`` from a constructor whose
    options are keyword-only.

    Args:
        max_workers: The (validated) number of workers, used for chunking.
        cloudpickle: Send callables with cloudpickle, so that lambdas,
            closures and ``__main__`` functions work in worker processes.
            Only meaningful where ``capabilities.process_isolation``.
    """

    backend: ClassVar[str] = "base"
    capabilities: ClassVar[Capabilities] = Capabilities()
    _task_options: TaskOptions | None = None
    _when_collected: weakref.finalize[..., object] | None = None
    # The handles of share(), released at shutdown.
    _shared: weakref.WeakSet[Any] | None = None
    # max_pending's slots; None when unbounded (the default).
    _slots: PendingSlots | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Every backend takes max_pending=, written once here: a
        # constructor of its own is wrapped to take it (a subclass that
        # inherits its parent's constructor inherits the wrapper).
        # A constructor that declares max_pending itself keeps it, and
        # calls _limit_pending().
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_takes_max_pending", False):
            return
        if "max_pending" not in inspect.signature(init).parameters:
            cls.__init__ = taking_max_pending(init)  # type: ignore[method-assign]

    def __init__(self, *, max_workers: int, cloudpickle: bool = True) -> None:
        if not isinstance(cloudpickle, bool):
            raise TypeError(f"cloudpickle must be True or False, got {cloudpickle!r}")
        self._max_workers = max_workers
        self._portable_callables = cloudpickle and self.capabilities.process_isolation
        # Reentrant: the inline backend runs tasks under it, and a task may
        # submit to its own executor.
        self._lock = threading.RLock()
        self._shutdown_started = False
        close_at_exit(self)

    # -- the public API -------------------------------------------------

    @property
    def max_workers(self) -> int:
        """The number of workers (1 for ``inline``)."""
        return self._max_workers

    @property
    def max_pending(self) -> int | None:
        """How many ``submit`` futures may be unfinished at once; None: any."""
        slots = self._slots
        return None if slots is None else slots.limit

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; see :meth:`executors.Executor.submit`."""
        check_callable(fn)
        if (
            self._task_options is None
            and not isinstance(fn, WithOptions)
            and submitting_options() is None
        ):
            # No task options in force, here or around: nothing to set.
            return self._submit_task(self._prepare(fn), args, kwargs)
        fn, options = self._task_options_for(fn)
        with submitting(options):
            return self._submit_task(self._prepare(fn), args, kwargs)

    def terminate_workers(self) -> None:
        """Stop every worker now with SIGTERM, then shut the executor down.

        Python 3.14's ``ProcessPoolExecutor.terminate_workers()``, on every
        backend. Every future that is not done resolves at once: queued
        ones are cancelled, running ones fail with
        :class:`~executors.WorkersTerminatedError`. Where workers cannot be
        stopped (``capabilities.terminates_workers`` is false: threads,
        inline) the running tasks are abandoned and run on.
        """
        self._end_workers(signal.SIGTERM, "terminate_workers")

    def kill_workers(self) -> None:
        """As :meth:`terminate_workers`, with SIGKILL."""
        self._end_workers(signal.SIGKILL, "kill_workers")

    def kill_task(self, future: Future[Any]) -> bool:
        """Stop the running task of ``future``; the executor lives on.

        Returns:
            True if the task was stopped: its future fails with
            :class:`~executors.TaskKilledError`. False if the future is not
            this executor's running task, or the backend cannot stop one
            task alone (``capabilities.kills_single_task``).
        """
        calls = self._calls
        if calls is None:
            return False
        call = calls.find(future)
        if call is None or not calls.stop(call):
            return False
        return calls.settle(
            call,
            error=TaskKilledError(
                f"the task was stopped by kill_task() on the {self.backend!r} "
                "executor; its worker was replaced"
            ),
            retry=False,
        )

    def share(self, obj: Any) -> Any:
        """Place ``obj`` once for many tasks; return what to pass them instead.

        The handle may be passed as an argument, at any depth, to any
        number of tasks; each task receives the object. Where workers are
        other processes (``capabilities.shared_memory``), the object is
        pickled once: its pickle-5 buffers (an array's data) go into one
        shared memory segment that every worker maps read-only and without
        a copy, and each worker unpickles it once and keeps it. Where tasks
        run in the caller's process (``thread``, ``inline``), the object
        itself is returned: nothing needs placing.

        ``handle.release()`` frees it once the tasks that use it are done;
        ``shutdown()`` releases every handle still held.

        Raises:
            NotImplementedError: the backend cannot share objects
                (``capabilities.shared_memory`` is false and its workers are
                other processes).
            RuntimeError: the executor is shut down or broken.
        """
        with self._lock:
            self._check_open()
        if not self.capabilities.process_isolation:
            return obj
        if not self.capabilities.shared_memory:
            raise NotImplementedError(
                f"the {self.backend!r} backend cannot share objects "
                "(capabilities.shared_memory is false): pass the object to "
                "each task, or keep it where every worker can read it"
            )
        handle = Shared(obj)
        with self._lock:
            if self._shared is None:
                self._shared = weakref.WeakSet()
            self._shared.add(handle)
        return handle

    def _release_shared(self) -> None:
        with self._lock:
            shared, self._shared = self._shared, None
        for handle in list(shared or ()):
            handle.release()

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[T]:
        """Ordered parallel map; see :meth:`executors.Executor.map`."""
        return self._start_map(
            fn, iterables, True, timeout, chunksize, buffersize, progress
        ).results()

    def map_unordered(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[T]:
        """Results as they complete; see :meth:`executors.Executor.map_unordered`."""
        return self._start_map(
            fn, iterables, False, timeout, chunksize, buffersize, progress
        ).results()

    def _end_workers(self, sig: signal.Signals, how: str) -> None:
        with self._lock:
            self._shutdown_started = True
        self._wake_blocked_submits()
        calls = self._calls
        if calls is not None:
            # Ending: the queue, idle once the running calls have failed,
            # must not release the workers gracefully (wait for them).
            calls.close(cancel_futures=True, ending=True)
            backend = self.backend
            calls.fail_launched(
                lambda: WorkersTerminatedError(
                    f"{how}() stopped the workers of the {backend!r} executor "
                    "while this task ran"
                )
            )
        self._signal_workers(sig)
        # Bounded: the workers are gone, by SIGKILL if they outlive the
        # grace. Threads cannot be stopped: leave them to end on their own.
        if sig == signal.SIGKILL:
            self._shutdown(self.capabilities.terminates_workers, True)
        else:
            with killing_after_grace(self._signal_workers):
                self._shutdown(self.capabilities.terminates_workers, True)
        if self.capabilities.terminates_workers:
            self._release_shared()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Release the workers; see :meth:`executors.Executor.shutdown`."""
        with self._lock:
            self._shutdown_started = True
        self._wake_blocked_submits()
        # Outside the lock: waiting for running tasks must not block a task
        # (or a callback) that tries to submit and gets the RuntimeError.
        self._shutdown(wait, cancel_futures)
        if wait:
            # The tasks that could read them are done.
            self._release_shared()
        if wait and self._when_collected is not None:
            # Closed for good: nothing is left to close when collected.
            self._when_collected.detach()
        if wait:
            # As the stdlib's shutdown(wait=True): the done-callbacks of the
            # finished work have run when it returns. (From the callback
            # thread itself this returns at once.)
            drain_callbacks()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C means "stop", not "finish the queue first": drop queued
            # work and let the backend stop what is running.
            self._interrupt()
            with killing_after_grace(self._signal_workers):
                self.shutdown(wait=True, cancel_futures=True)
        else:
            self.shutdown(wait=True)
        return None

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown_started else "running"
        name = type(self).__name__
        workers = self._max_workers
        return f"<{name} backend={self.backend!r} max_workers={workers} {state}>"

    # -- shared plumbing ------------------------------------------------

    def _close_when_collected(self, close: Callable[[], object]) -> None:
        """Run ``close()`` if this executor is dropped without ``shutdown()``.

        See :func:`executors._lifecycle.close_when_collected`; a
        ``shutdown(wait=True)`` cancels it.
        """
        self._when_collected = close_when_collected(self, close)

    def _prepare(self, fn: Callable[..., T]) -> Callable[..., T]:
        return portable(fn) if self._portable_callables else fn

    def _check_open(self) -> None:
        # The stdlib's messages, so one test checks every backend. Exiting
        # comes before "shut down": the exit hook shuts executors down, and
        # a late submit should learn why.
        broken = self._broken_error()
        if broken is not None:
            raise broken
        if interpreter_exiting():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._shutdown_started:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _submit_task(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        self._start()
        slots = self._slots
        if slots is None:
            with self._lock:
                self._check_open()
                return self._submit(fn, args, kwargs)
        self._take_slot(slots)
        try:
            with self._lock:
                self._check_open()
                future = self._submit(fn, args, kwargs)
        except BaseException:
            slots.give_back()
            raise
        add_internal_callback(future, slots.give_back)
        return future

    # -- max_pending ----------------------------------------------------

    def _limit_pending(self, max_pending: int | None) -> None:
        """Bound the unfinished futures of ``submit`` (``create(max_pending=)``)."""
        self._slots = None if max_pending is None else PendingSlots(max_pending)

    def _take_slot(self, slots: PendingSlots) -> None:
        if slots.try_take():
            return
        # At the limit. Closed, broken or exiting: say so rather than wait.
        with self._lock:
            self._check_open()
        if self._in_own_task():
            raise RuntimeError(
                f"submit() was called from a task of this {self.backend!r} "
                f"executor while max_pending={slots.limit} futures are "
                "unfinished; a task does not wait for a free slot, since it "
                "would hold a worker that those futures may need. Submit "
                "from outside the executor's tasks, or raise max_pending"
            )
        if not slots.take():
            # shutdown() woke us: the stdlib's message (or broken, exiting).
            with self._lock:
                self._check_open()
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _wake_blocked_submits(self) -> None:
        slots = self._slots
        if slots is not None:
            slots.close()

    def _submit_map_item(
        self, fn: Callable[..., T], args: tuple[Any, ...]
    ) -> Future[T]:
        # A map bounds itself (buffersize): its items take no max_pending
        # slot and never wait for one.
        with self._lock:
            self._check_open()
            return self._submit(fn, args, {})

    def _submit_chunk_task(
        self, fn: Callable[..., Any], chunk: _map.Chunk
    ) -> Future[_map.ChunkResult]:
        with self._lock:
            self._check_open()
            return self._submit_chunk(fn, chunk)

    def _start_map(
        self,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
        timeout: float | None,
        chunksize: int | None,
        buffersize: int | None,
        progress: bool,
    ) -> _map.MapRun | _map.EngineMap:
        timeout, chunksize, buffersize = check_map_arguments(
            fn, timeout, chunksize, buffersize
        )
        fn, options = self._task_options_for(fn)
        # Before start_map: map's timeout counts from the call, and starting
        # the workers is not part of the map.
        self._start()
        with self._lock:
            self._check_open()
        if options is None:
            engine = self._engine_map(
                fn, iterables, ordered, timeout, chunksize, buffersize, progress
            )
            if engine is not None:
                return _map.EngineMap(engine)
        return _map.start_map(
            self,
            self._prepare(fn),
            iterables,
            ordered=ordered,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            progress=progress,
            task_options=options,
        )

    # -- task control -----------------------------------------------------

    def _set_task_options(self, options: TaskOptions) -> None:
        """The executor's defaults for every task (``create(task_timeout=...)``)."""
        if not self.capabilities.task_control and not options.is_default:
            raise TypeError(
                f"the {self.backend!r} backend does not support task_timeout "
                "or retries (capabilities.task_control is false)"
            )
        self._task_options = options

    def _task_options_for(
        self, fn: Callable[..., T]
    ) -> tuple[Callable[..., T], TaskOptions | None]:
        fn, per_call = unwrap_options(fn)
        if per_call is None:
            return fn, self._task_options
        if not self.capabilities.task_control:
            raise TypeError(
                f"the {self.backend!r} backend does not support with_options() "
                "(capabilities.task_control is false)"
            )
        return fn, per_call.over(self._task_options)
