"""The ``celery`` executor: futures in front of a Celery deployment.

This module holds :class:`CeleryExecutor`: the executor's hooks in Celery's
terms, and what a task's result, a lost worker or a refusal means for its
future. Its arguments are checked by :mod:`._arguments`; the app, the
private deployment and the threads are wired by :mod:`._connection`; the
table of tasks sent to Celery (publishing, matching results, revoking) is
:class:`~._sent.SentTasks`.

Data flow::

    submit(fn, *args)                                         caller thread
      | dumps((fn, args, kwargs)) here: a pickling error fails the future
      v
    CallQueue   <- cancel() and shutdown(cancel_futures=True) act here: a
      |            queued call has never reached Celery
      |  at most `max_workers` calls out at once (the deployment's slots)
      v
    SentTasks.launch: one task message "executors.run_call"    any thread
      |  to the broker; its task id maps back to the call (:mod:`._sent`)
      v
    celery worker pool process: run_call(payload) -> (ok, outcome bytes)
      v  the Redis result backend stores the result and publishes it
    ResultListener thread: one PSUBSCRIBE for this executor's task ids;
      decode, settle the future, launch the next call

    LostWorkerWatch thread (existing deployments): asks the workers which
      of our tasks each holds; fails the tasks of a worker silent for
      lost_worker_timeout with WorkerCrashedError (:mod:`._lostwatch`)

    DeploymentWatch thread (the private deployment): reads its worker's
      reports, watches Redis and the worker (:mod:`._deploymentwatch`)

Two ways to start: without ``app``/``broker``/``backend`` the executor
starts a private deployment on its first ``submit`` or ``map`` (see
:mod:`._deployment`) and stops it at ``shutdown()``; with them it uses an
existing deployment and stops nothing of it.

Stopping work: one task (a timeout, ``kill_task``) is revoked with
``terminate=True`` and SIGKILL, on either kind of deployment: the worker
kills the pool process running it and forks a new one. ``terminate_workers``
signals the private worker's whole process group (main and pool processes);
on an existing deployment it revokes this executor's running tasks with the
signal instead, since those workers are not ours to stop.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from celery import states

from ..._base import BaseExecutor
from ..._callqueue import Call, CallQueue
from ..._capabilities import WORKER_FLAGS, Capabilities
from ..._errors import ExecutorFailedError, ExecutorInterruptedError
from ..._lifecycle import join_unless_current
from ..._outcome import dumps
from ..._workers import AUTO, WorkerSettings
from ._arguments import DEFAULT, Default, check_arguments
from ._celeryside import discover_slots, failure, make_app, worker_lost_error
from ._connection import DeploymentConnection
from ._deployment import LocalDeployment
from ._redisserver import memory_cap_error
from ._sent import SentTasks
from .task import from_wire, to_wire
from .worker import refused_for_memory

__all__ = ["CeleryExecutor"]

T = TypeVar("T")


class CeleryExecutor(BaseExecutor):
    """Runs tasks on a Celery deployment: a private one, or yours.

    Args:
        max_workers: Private deployment: the worker's pool processes
            (default: the usable CPUs). Existing deployment: the most tasks
            handed to Celery at once (default: the pool sizes its workers
            report).
        app: An existing Celery app (its result backend must be Redis).
        broker: The broker URL of an existing deployment.
        backend: Its result backend URL (Redis; default: ``broker``).
        queue: The queue to send to on an existing deployment (default:
            the app's default queue).
        initializer: Private deployment only: run in each pool process as
            it starts; if it raises, the executor breaks.
        initargs: Arguments for ``initializer``.
        max_tasks_per_child: Private deployment only: replace a pool
            process after this many tasks.
        redis_max_memory: Private deployment only: the Redis server's
            memory cap in bytes (default: a quarter of the machine's
            memory, at least 1 GiB). A task whose arguments or result Redis
            refuses at the cap fails with ``ExecutorFailedError``.
        lost_worker_timeout: Existing deployment only: seconds a worker
            holding this executor's tasks may stop answering before those
            tasks fail with ``WorkerCrashedError`` (default 10; ``None``
            never gives up on them). See :mod:`._lostwatch`.
        cloudpickle: Send the callable with cloudpickle (lambdas work).
        finalizer: Private deployment only: called in each pool process
            when it leaves normally (shutdown, recycling); an exception
            there is logged in the caller. With a finalizer, ``shutdown()``
            stops the worker warm (Celery's SIGTERM) before it kills it.
        finalargs: Arguments for ``finalizer``.
        threads_per_worker: Private deployment only: cap on each pool
            process's BLAS/OpenMP threads; default ``"auto"``:
            ``max(1, cpus // max_workers)``; ``None``: no cap.
        forward_logs: Private deployment: the log records of tasks reach
            this process's loggers (default ``True``). An existing
            deployment's workers send none (its flags say so).
        max_memory_per_child: Private deployment only: bytes, or a string
            such as ``"512MB"``; Celery's own ``--max-memory-per-child``:
            a pool process over it after a task is replaced (cold: Celery
            starts the new one once the old one has left).
    """

    backend = "celery"
    # Stopping one task is a revoke with terminate=True: it works on the
    # private deployment and on any deployment whose workers run Celery's
    # defaults (the prefork pool, remote control on); see the backend page.
    capabilities = Capabilities(
        survives_worker_death=True,
        task_control=True,
        stops_timed_out_tasks=True,
        kills_single_task=True,
        terminates_workers=True,
        # Issue 26, on the private deployment (an existing one's instances
        # declare none: see _EXISTING); recycling is Celery's own, cold.
        worker_identity=True,
        worker_finalizer=True,
        recycles_workers=True,
        forwards_logs=True,
        limits_worker_threads=True,
        nested_executors=True,
    )
    _calls: CallQueue

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        app: Any = None,
        broker: str | None = None,
        backend: str | None = None,
        queue: str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        redis_max_memory: int | None = None,
        lost_worker_timeout: float | Default | None = DEFAULT,
        cloudpickle: bool = True,
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        threads_per_worker: int | str | None = AUTO,
        forward_logs: bool = True,
        max_memory_per_child: int | str | None = None,
    ) -> None:
        checked = check_arguments(
            max_workers=max_workers,
            app=app,
            broker=broker,
            backend=backend,
            queue=queue,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
            redis_max_memory=redis_max_memory,
            lost_worker_timeout=lost_worker_timeout,
            finalizer=finalizer,
            finalargs=finalargs,
            threads_per_worker=threads_per_worker,
            max_memory_per_child=max_memory_per_child,
        )
        existing, workers = checked.existing, checked.workers
        # Checked before anything starts; the workers count recycling
        # themselves (Celery's options), not the spec.
        settings = WorkerSettings(
            workers=workers,
            finalizer=finalizer,
            finalargs=finalargs,
            threads_per_worker=threads_per_worker if not existing else None,
            forward_logs=forward_logs,
            max_memory_per_child=max_memory_per_child,
            max_tasks_per_child=checked.max_tasks_per_child,
        )
        if existing and app is None:
            app = make_app(broker, backend or broker, {})
            owns_app = True
        else:
            owns_app = not existing
        if existing and max_workers is None:
            # Asked now, so max_workers (and map's chunking) is right from
            # the start; a deployment whose workers do not answer fails here.
            try:
                workers = discover_slots(app)
            except BaseException:
                if owns_app:
                    app.close()
                raise
        super().__init__(max_workers=workers, cloudpickle=cloudpickle)
        self._deployment: LocalDeployment | None = None
        self._worker_settings: WorkerSettings | None = None
        if existing:
            # Its workers are not this process's: none of them knows this
            # executor's slots, listener or hook.
            self.capabilities = _EXISTING  # type: ignore[misc]
        else:
            if initializer is not None:
                initializer = self._prepare(initializer)
            if finalizer is not None:
                settings.finalizer = self._prepare(finalizer)
            # Pickled now: a bad initializer or finalizer fails create().
            # The slots are billiard's indexes; Celery counts the tasks and
            # the memory (--max-tasks-per-child, --max-memory-per-child).
            spec = settings.spec(max_memory=None, max_tasks=None)
            try:
                payload = dumps((initializer, initargs, spec))
            except BaseException:
                settings.close(wait=False)
                raise
            self._worker_settings = settings
            self._deployment = LocalDeployment(
                workers,
                checked.max_tasks_per_child,
                payload,
                max_memory=checked.max_memory,
                max_memory_per_child=settings.max_memory,
                graceful=finalizer is not None,
            )
        # The error of a task whose message or result the private Redis
        # server refused at its memory cap; an existing deployment's
        # refusals are Celery failures like any other.
        self._refused_error: Callable[[], BaseException] | None = None
        if self._deployment is not None:
            self._refused_error = functools.partial(
                memory_cap_error, checked.max_memory
            )
        self._sent = SentTasks(
            self._settle_task, self._break, refused=self._refused_error
        )
        self._start_lock = threading.Lock()
        self._connected = False
        self._released = False
        self._lost_after = checked.lost_after
        self._sent.track_times = self._lost_after is not None
        self._connection = DeploymentConnection(
            app,
            owns_app=owns_app,
            queue_name=queue,
            deployment=self._deployment,
            sent=self._sent,
            lost_after=self._lost_after,
            on_broken=self._break,
            on_worker_lost=self._on_worker_lost,
            on_refused=self._on_refused,
        )
        self._calls = CallQueue(
            self._sent.launch,
            lambda: self._max_workers,
            on_idle=self._release,
            stop=self._sent.stop,
            # Celery replaces a pool process that died: the executor lives on.
            retries_crashes=True,
        )

    # -- hooks ------------------------------------------------------------------

    def _start(self) -> None:
        if self._connected:
            return
        with self._start_lock:
            with self._lock:
                self._check_open()
            if self._connected:
                return
            try:
                self._connection.open()
            except BaseException as exc:
                self._connection.close()
                if isinstance(exc, Exception) and not isinstance(
                    exc, ExecutorFailedError
                ):
                    error = ExecutorFailedError(
                        f"could not reach the Celery deployment: {exc!r}"
                    )
                    error.__cause__ = exc
                    raise error from exc
                raise
            with self._lock:
                shut_down = self._shutdown_started
                self._connected = not shut_down
        if shut_down:
            self._close_connection()
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        serializer = self._sent.serializer
        return self._calls.submit_pickled(
            fn, args, kwargs, wrap=lambda data: to_wire(data, serializer)
        )

    def _interrupt(self) -> None:
        # Ctrl-C leaving a `with` block: stop what runs now. Queued calls
        # are cancelled first: failing the running ones frees the window,
        # and the queue would launch them into the worker about to die.
        self._calls.close(cancel_futures=True)
        launched = self._sent.take_all()
        if self._deployment is not None:
            fate = "its worker was killed"
        else:
            fate = "it was revoked with terminate=True"
        message = (
            "the 'celery' executor was interrupted (KeyboardInterrupt) while the "
            f"task ran; {fate}"
        )
        # Failed before the kill: a killed worker's tasks come back through
        # the result listener as lost workers, and the first to settle wins.
        self._calls.fail_launched(lambda: ExecutorInterruptedError(message))
        if self._deployment is not None:
            self._deployment.kill()
        else:
            self._sent.terminate(launched, "SIGKILL")

    def _signal_workers(self, sig: signal.Signals) -> None:
        numbers = self._sent.take_all()
        deployment = self._deployment
        if deployment is not None:
            # Its own process group: the main process and every pool
            # process, whatever they run.
            deployment.signal_worker(sig)
        elif numbers and self._connected:
            # Not ours to stop: the tasks this executor is running are, with
            # SIGKILL whatever the signal. A task may ignore SIGTERM, and
            # the worker records a terminated task as revoked at once, so a
            # later SIGKILL would no longer find it: it would run on and
            # hold a worker of the deployment.
            self._sent.terminate(numbers, "SIGKILL")
        with self._lock:
            released, self._released = self._released, True
        if not released:
            self._close_connection()

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self._calls.close(cancel_futures)
        if not wait:
            return
        self._calls.wait_idle()
        with self._start_lock:
            pass  # a start in progress sees the shutdown and stops
        for thread in self._connection.threads():
            join_unless_current(thread)

    def _release(self) -> None:
        # on_idle: closed, and every future settled. Maybe in the listener.
        with self._lock:
            if self._released or self._calls.ending:
                return  # terminate_workers(): _signal_workers tears down
            self._released = True
        self._close_connection()

    def _close_connection(self) -> None:
        self._connection.close()
        # The worker is gone: what its pool processes sent has arrived.
        if self._worker_settings is not None:
            self._worker_settings.close(wait=True)

    # -- the calls ----------------------------------------------------------------

    def _settle_task(self, call: Call, meta: dict[str, Any]) -> None:
        """Settle ``call`` with its task's result meta (a ready state)."""
        status = meta["status"]
        if status != states.SUCCESS:
            error = meta.get("result")
            if self._refused_error is not None and refused_for_memory(error):
                # The result was refused, Celery's failure record fit.
                self._calls.settle(call, error=self._refused_error())
                return
            self._calls.settle(call, error=failure(status, error))
            return
        ok, wire = meta["result"]
        self._calls.settle_outcome(call, (bool(ok), from_wire(wire)))

    def _break(self, make_error: Callable[[], BaseException]) -> None:
        self._sent.take_all()
        self._calls.break_(make_error)
        if self._deployment is not None:
            # Stop a pool that restarts processes whose initializer fails.
            self._deployment.kill()

    def _on_refused(self, task_id: str) -> None:
        # A pool process could not store the result: Redis is at its cap.
        assert self._refused_error is not None
        call = self._sent.take_by_id(task_id)
        if call is not None:
            self._calls.settle(call, error=self._refused_error())

    def _on_worker_lost(
        self, numbers: list[str], worker: str | None, silent: float
    ) -> None:
        # The lost-worker watch: these tasks went with a worker that stopped
        # answering. Their futures fail (or are retried, retries_crashes)
        # and their slots free up for the workers that answer.
        assert self._lost_after is not None
        for number in numbers:
            call = self._sent.take(number)
            if call is None:
                continue  # its result arrived meanwhile
            error = worker_lost_error(worker, silent, self._lost_after)
            self._calls.settle(call, error=error)


# An existing deployment's workers: none of the worker flags holds (they
# are earned by the private deployment's workers only).
_EXISTING = dataclasses.replace(
    CeleryExecutor.capabilities, **dict.fromkeys(WORKER_FLAGS, False)
)
