"""Backend ``inline``: run each task inside ``submit``, in the caller.

The reference implementation of the contract and a debugging aid: switch a
program to ``EXECUTORS_BACKEND=inline`` and every task runs in the calling
thread, so breakpoints, profilers and plain tracebacks work.

How it differs (declared in :attr:`InlineExecutor.capabilities`): a future is
already finished when ``submit`` returns, so nothing is ever queued or
running beside the caller: ``cancel()`` always fails, ``map(timeout=)`` only
limits how long a lazy map waits between results, and ``shutdown(wait=False)``
has nothing to leave running.

Task control takes the options of every other backend, so a program that
sets them still runs when switched here to debug. Each attempt runs in the
caller, inside ``submit``, and a retry delay is slept there too (Ctrl-C
cuts it short). The task is the caller's own code running, so nothing can
stop it: a task past its timeout runs to its end, and only then does its
future fail with :class:`~executors.TaskTimeoutError`; ``kill_task``
returns False.

It takes the ``max_workers`` of every other backend, so a program that sizes
its pool still runs when switched to ``inline``; whatever the size, one task
runs at a time, and ``repr`` says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from .._base import BaseExecutor
from .._bootstrap import initializer_error
from .._capabilities import Capabilities
from .._control import TaskOptions, record_attempts, submitting_options
from .._errors import TaskTimeoutError
from .._futures import Future as SettledFuture
from .._options import check_initializer, check_max_workers
from .._workers import ProcessWideCap, WorkerContext, WorkerSettings, running_as

__all__ = ["InlineExecutor"]

T = TypeVar("T")


class InlineExecutor(BaseExecutor):
    """Runs each task synchronously in the thread that submits it.

    Args:
        max_workers: Any valid pool size (``None`` or an int >= 1), checked
            as every backend checks it, so that a program written for another
            backend runs unchanged. Tasks still run one at a time, in the
            caller: :attr:`max_workers` reports 1 and ``repr`` shows the size
            that was asked for. Options that would change results (a start
            method, a per-child task limit) are still refused.
        initializer: Called once, in the caller, when the executor is
            created. If it raises, the executor is broken.
        initargs: Arguments for ``initializer``.
        finalizer: Called once, in the caller, at shutdown; an exception
            there is logged on ``executors.workers``.
        finalargs: Arguments for ``finalizer``.
        threads_per_worker: Cap the BLAS/OpenMP thread pools at this many
            threads while the executor is open. Those pools are the
            caller's, so the cap applies only when asked for (``"auto"``
            and ``None``: no cap) and is undone at shutdown.
        forward_logs: Accepted for the shared signature: a task's records
            are in the caller's logging tree already.

    Inside a task, ``executors.worker_id()`` is 0 and
    ``executors.worker_state()`` is the executor's one dict (the
    initializer runs as the worker too, and may fill it).
    """

    backend = "inline"
    capabilities = Capabilities(
        runs_concurrently=False,
        process_isolation=False,
        cancels_queued=False,
        # Honoured in place; the task is the caller's own thread running,
        # so stops_timed_out_tasks and kills_single_task stay False.
        task_control=True,
        worker_identity=True,
        worker_finalizer=True,
        # Tasks log in the caller's own thread: their records are there.
        forwards_logs=True,
        limits_worker_threads=True,
        nested_executors=True,
    )

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        threads_per_worker: int | str | None = "auto",
        forward_logs: bool = True,
    ) -> None:
        # Checked like everywhere else, then kept only for repr: the size of
        # the pool cannot change a result here, only how many tasks overlap,
        # and inline never overlaps them.
        self._requested_workers = check_max_workers(max_workers, default=1)
        check_initializer(initializer, initargs)
        settings = WorkerSettings(
            workers=1,
            finalizer=finalizer,
            finalargs=finalargs,
            threads_per_worker=threads_per_worker,
            forward_logs=forward_logs,
            in_process=True,
        )
        super().__init__(max_workers=1)
        # The one worker: the caller's thread while a task of this executor
        # runs in it (running_as).
        self._worker = WorkerContext(0, None, settings.finalizer, settings.finalargs)
        self._thread_cap: ProcessWideCap | None = None
        if settings.threads is not None:
            self._thread_cap = ProcessWideCap(settings.threads)
        # Tasks of this executor running now in each thread (a task may
        # submit to its own executor): _in_own_task reads it.
        self._running = threading.local()
        self._init_error: BaseException | None = None
        if initializer is not None:
            try:
                with running_as(self._worker):
                    initializer(*initargs)
            except Exception as exc:
                self._init_error = exc

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown_started else "running"
        asked = self._requested_workers
        size = f" ({asked} requested)" if asked != 1 else ""
        return (
            f"<{type(self).__name__} backend={self.backend!r} max_workers=1{size}: "
            f"one task at a time, in the caller, {state}>"
        )

    def _broken_error(self) -> BaseException | None:
        if self._init_error is None:
            return None
        return initializer_error(
            self.backend, None, cause=self._init_error, where="in the caller"
        )

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        # The project's future: a falsy exception still raises.
        future: Future[T] = SettledFuture()
        future.set_running_or_notify_cancel()
        options = submitting_options()
        running = self._running
        depth = getattr(running, "depth", 0)
        running.depth = depth + 1
        try:
            with running_as(self._worker):
                if options is None or options.is_default:
                    result = fn(*args, **kwargs)
                else:
                    _attempts(future, fn, args, kwargs, options)
                    return future
        except KeyboardInterrupt as exc:
            # Ctrl-C belongs to the caller, who is running the task.
            future.set_exception(exc)
            raise
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            running.depth = depth
        return future

    def _in_own_task(self) -> bool:
        return bool(getattr(self._running, "depth", 0))

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        # Nothing runs beside the caller: the worker leaves at once (once).
        with running_as(self._worker):
            self._worker.leave()
        cap, self._thread_cap = self._thread_cap, None
        if cap is not None:
            cap.restore()


def _attempts(
    future: Future[T],
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: TaskOptions,
) -> None:
    """Run ``fn`` as its task options say, every attempt in this thread.

    Settles ``future`` with the last attempt's outcome: set, never raised
    again, since a raise would replace the error's ``__context__`` with
    whatever exception the caller is handling around ``submit``. The
    retry decision is the one every backend makes
    (:meth:`~executors._control.TaskOptions.retryable`); no worker can die
    under an inline task, so only ``retry_on`` earns a retry. A
    ``KeyboardInterrupt``, from the task or during a retry delay, is the
    caller's and propagates at once: it is never retried.
    """
    timeout = options.timeout
    attempts = 0
    while True:
        attempts += 1
        start = time.monotonic()
        try:
            result = fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            error: BaseException = _late(start, timeout, exc) or exc
        else:
            late = _late(start, timeout, None)
            if late is None:
                future.set_result(result)
                return
            del result  # ran past its timeout: dropped, as elsewhere
            error = late
        if not options.retryable(error, attempts, crashed=False):
            future.set_exception(record_attempts(error, attempts))
            return
        del error
        if options.delay:
            # In place, as the attempts: an interruptible sleep, so Ctrl-C
            # raises here and reaches the caller.
            time.sleep(options.delay)


def _late(
    start: float, timeout: float | None, raised: BaseException | None
) -> TaskTimeoutError | None:
    """The error of a run that began at ``start`` and ran past ``timeout``;
    None if it ended in time. ``raised``: what the run itself raised."""
    if timeout is None or time.monotonic() - start <= timeout:
        return None
    late = TaskTimeoutError.ran_past(
        timeout,
        "this backend cannot stop it (it runs in the caller), so it ran to its "
        "end and its outcome was dropped",
    )
    # What the task raised at the end of its run stays in sight.
    late.__context__ = raised
    return late
