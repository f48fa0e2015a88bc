"""The caller's side: an executor's worker options, checked once, and its listener."""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from collections.abc import Callable
from typing import Any, Final

from .._options import check_int, cpu_count
from ._context import WorkerSpec
from ._limits import default_threads_per_worker, parse_size
from ._loglisten import LogListener
from ._slots import abstract_sockets

__all__ = ["AUTO", "WorkerSettings", "caller_levels"]

#: ``threads_per_worker="auto"``: ``max(1, cpus // max_workers)`` on
#: process backends, no cap on ``thread``.
AUTO: Final = "auto"


def caller_levels() -> dict[str, int]:
    """The levels set in this process's logging tree, root's as ``""``.

    A worker sets the same, so that it sends the records the caller would
    handle and no others (the caller checks again as it re-emits).
    """
    levels = {"": logging.getLogger().level}
    # A copy: another thread may create a logger meanwhile.
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


class WorkerSettings:
    """The worker options of one executor, checked at ``create()``.

    A backend makes one in its constructor, passes :meth:`spec` to its
    workers' start-up (inside :class:`~executors._bootstrap.WorkerBootstrap`)
    and calls :meth:`close` once its workers are gone.

    Args:
        workers: ``max_workers``: the number of slots.
        finalizer: Called in each worker when it leaves normally.
        finalargs: Arguments for ``finalizer``.
        threads_per_worker: Cap on each worker's BLAS/OpenMP threads;
            ``"auto"``: ``max(1, cpus // workers)`` (``None`` in threads);
            ``None``: no cap.
        forward_logs: Send the workers' log records to this process.
        max_memory_per_child: Bytes, or a string such as ``"512MB"``: a
            worker over it after a task is replaced.
        max_tasks_per_child: A worker that ran this many tasks is replaced.
        in_process: The workers are threads of this process: no slots
            sockets, no listener, and no cap unless asked for.
        on_leaving: With recycling, called (in the listener's thread) with
            ``(pid, slot)`` when a worker says it will leave soon: start its
            replacement now, and the pool keeps its throughput. May be set
            later, as the attribute of that name (once the pool exists).
    """

    def __init__(
        self,
        *,
        workers: int,
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        threads_per_worker: int | str | None = AUTO,
        forward_logs: bool = True,
        max_memory_per_child: int | str | None = None,
        max_tasks_per_child: int | None = None,
        in_process: bool = False,
        on_leaving: Callable[[int, int | None], None] | None = None,
    ) -> None:
        if finalizer is not None and not callable(finalizer):
            raise TypeError(f"finalizer must be callable or None, got {finalizer!r}")
        if not isinstance(finalargs, tuple):
            raise TypeError(
                f"finalargs must be a tuple, got {type(finalargs).__name__}"
            )
        if not isinstance(forward_logs, bool):
            raise TypeError(f"forward_logs must be a bool, got {forward_logs!r}")
        self.workers = workers
        self.finalizer = finalizer
        self.finalargs = finalargs
        self.threads = _check_threads(threads_per_worker, workers, in_process)
        self.forward_logs = forward_logs
        self.max_memory = parse_size(max_memory_per_child)
        self.max_tasks = check_int(
            max_tasks_per_child, "max_tasks_per_child", minimum=1
        )
        self.in_process = in_process
        self.on_leaving = on_leaving
        self.token = uuid.uuid4().hex
        self._folder: str | None = None
        self.listener: LogListener | None = None

    def spec(self, **overrides: Any) -> WorkerSpec:
        """What each worker process gets; starts the listener on first call.

        ``overrides`` replace fields of the spec (``slots=None`` for a
        backend that numbers its workers itself, ``max_tasks=None`` for one
        that counts tasks itself).
        """
        recycles = self.max_tasks is not None or self.max_memory is not None
        if (self.forward_logs or recycles) and self.listener is None:
            self.listener = LogListener(self._leaving)
        if not abstract_sockets() and self._folder is None:
            # Not "executors-*": that prefix marks the project's own folders.
            self._folder = tempfile.mkdtemp(prefix="exslots-")
        listener = self.listener
        spec = WorkerSpec(
            token=self.token,
            slots=self.workers,
            folder=self._folder,
            threads=self.threads,
            log_address=listener.address if listener is not None else None,
            log_secret=listener.secret if listener is not None else b"",
            forward=self.forward_logs,
            levels=caller_levels() if self.forward_logs else {},
            finalizer=self.finalizer,
            finalargs=self.finalargs,
            max_memory=self.max_memory,
            max_tasks=self.max_tasks,
        )
        for name, value in overrides.items():
            setattr(spec, name, value)
        return spec

    def _leaving(self, pid: int, slot: int | None) -> None:
        # Read now, not when the listener started: a backend may set
        # on_leaving once its pool exists, after the spec was made.
        on_leaving = self.on_leaving
        if on_leaving is not None:
            on_leaving(pid, slot)

    def close(self, wait: bool = True) -> None:
        """Once the workers are gone (or going): stop the listener, clean up.

        With ``wait``, returns once every worker still connected sent its
        last records and hung up (bounded).
        """
        # A later spec() (a Dask cluster started again after Ctrl-C) makes
        # a new listener.
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close(wait)
        folder, self._folder = self._folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _check_threads(value: object, workers: int, in_process: bool) -> int | None:
    if value == AUTO:
        if in_process:
            return None
        return default_threads_per_worker(workers, cpu_count())
    if value is None:
        return None
    if isinstance(value, str):
        raise ValueError(
            f"threads_per_worker must be an int, 'auto' or None, got {value!r}"
        )
    threads = check_int(value, "threads_per_worker", minimum=1)
    if threads is None:  # pragma: no cover - None handled above
        return None
    return threads
