"""What a backend can and cannot do, declared once, read by tests and users."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WORKER_FLAGS", "Capabilities"]


@dataclass(frozen=True)
class Capabilities:
    """Declared behaviour that differs between backends.

    The conformance suite selects tests by these flags, never by backend
    name, and users can read them instead of special-casing names.

    Attributes:
        runs_concurrently: Tasks run beside the caller, so a future can be
            pending or running while the caller goes on. ``False`` only for
            ``inline``, which runs each task inside ``submit``.
        process_isolation: Tasks run in other processes: arguments, results
            and the callable are pickled, and a task that crashes its
            process does not take the caller down.
        cancels_queued: ``cancel()`` succeeds on a future whose task has not
            started, and ``shutdown(cancel_futures=True)`` cancels it.
        survives_worker_death: A worker that dies fails only the task it was
            running; every other future completes and the executor stays
            usable. When ``False`` a dead worker breaks the executor and
            every pending future fails with a ``BrokenExecutor`` subclass.
        retries_lost_tasks: A task whose worker died is run again elsewhere
            (a Dask cluster) until it has killed too many workers; only then
            does its future fail, even without ``retries=``.
        task_control: ``task_timeout``, ``retries``, ``retry_on`` and
            ``retry_delay`` (at ``create()`` and through ``with_options``)
            are honoured.
        stops_timed_out_tasks: A task past its timeout is stopped and its
            worker replaced; ``False`` means it is abandoned: its future
            fails at the limit but the task runs on to its end.
        kills_single_task: ``kill_task(future)`` can stop one running task
            without breaking the executor.
        terminates_workers: ``terminate_workers()`` and ``kill_workers()``
            stop running tasks. ``False`` (threads, inline) means they can
            only fail the futures and drop the queue: running tasks are
            abandoned.
        shared_memory: Large pickle-5 buffers of arguments and results
            travel through shared memory (``shm_threshold=`` at
            ``create()``; see ``docs/large-data.md``).
        worker_identity: ``executors.worker_id()`` and
            ``executors.worker_state()`` work inside its tasks.
        worker_finalizer: ``finalizer=`` / ``finalargs=`` run in each
            worker when it leaves normally.
        recycles_workers: ``max_memory_per_child=`` (and
            ``max_tasks_per_child=`` where the backend takes it) replace a
            worker after a task, the replacement started first.
        forwards_logs: ``logging`` records emitted in a task reach the
            caller's loggers (``forward_logs=``).
        limits_worker_threads: ``threads_per_worker=`` caps the BLAS and
            OpenMP thread pools in each worker.
        nested_executors: a task may create and use an executor of its own
            (any backend).

    The task-control flags default to ``False``: a backend gets them by
    keeping its futures in a :class:`~executors.backend.CallQueue` and declaring
    them (see the plugin guide).
    """

    runs_concurrently: bool = True
    process_isolation: bool = True
    cancels_queued: bool = True
    survives_worker_death: bool = False
    retries_lost_tasks: bool = False
    task_control: bool = False
    stops_timed_out_tasks: bool = False
    kills_single_task: bool = False
    terminates_workers: bool = False
    shared_memory: bool = False
    worker_identity: bool = False
    worker_finalizer: bool = False
    recycles_workers: bool = False
    forwards_logs: bool = False
    limits_worker_threads: bool = False
    nested_executors: bool = False


#: The flags that say what a backend's own workers do (docs/workers.md).
WORKER_FLAGS = (
    "worker_identity",
    "worker_finalizer",
    "recycles_workers",
    "forwards_logs",
    "limits_worker_threads",
    "nested_executors",
)
