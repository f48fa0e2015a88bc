"""The ``dask`` executor: :class:`DaskExecutor` on the shared call queue."""

from __future__ import annotations

import functools
import multiprocessing.context
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

import cloudpickle
import dask
import distributed
from distributed.security import Security

from ... import _map
from ..._base import BaseExecutor
from ..._callqueue import CallQueue
from ..._capabilities import Capabilities
from ..._lifecycle import join_unless_current
from ..._options import check_timeout, start_method_of
from ..._outcome import dumps, initializer_error
from ..._serialize import unwrap
from ..._workers import WorkerSettings
from . import _scheduler_side
from ._cluster import START_METHOD_KEY, Runtime, connect, start_local_cluster
from ._dispatch import Dispatch, translate
from ._options import check_options
from ._shared import DaskShared, collecting
from ._worker import InitializerPlugin, summarize

__all__ = ["DaskExecutor"]

# A remote scheduler unpickles it without importing executors.
cloudpickle.register_pickle_by_value(_scheduler_side)

T = TypeVar("T")


class DaskExecutor(BaseExecutor):
    """Tasks run on a Dask cluster, a local one unless told otherwise.

    Args:
        max_workers: Worker processes of the local cluster, one thread each;
            default: the usable CPUs.
        address: Connect to the scheduler there (``"tcp://10.0.0.5:8786"``)
            instead of starting a cluster; it unpickles what we send.
        client: A synchronous :class:`distributed.Client` to reuse.
        initializer: Called in every worker process, later ones included.
            If it fails the executor is broken.
        initargs: Arguments for ``initializer``.
        allowed_failures: How many times a task may be on a worker that dies
            before it fails with :class:`executors.WorkerCrashedError`.
        max_in_flight: Tasks handed to Dask at once; default: the cluster's
            worker threads. Raise it for an adaptive cluster.
        dashboard_address: Serve Dask's dashboard there, such as
            ``"127.0.0.1:8787"`` (needs bokeh); ``":8787"`` means 127.0.0.1.
        mp_context: ``"spawn"`` or ``"forkserver"``, or such a context; sets
            Dask's process-wide ``distributed.worker.multiprocessing-method``.
        cluster_options: More arguments for :class:`distributed.LocalCluster`.
        connect_timeout: Seconds to wait for the scheduler at ``address``.
        security: A :class:`distributed.security.Security` to connect to
            ``address`` with, or for the local cluster instead of mutual TLS
            with a throw-away certificate; ``Security()`` turns TLS off.
        cloudpickle: Send the callable with cloudpickle (lambdas work).
        finalizer: Called in every worker process as it closes (shutdown,
            or a worker retired); an exception there is logged in the
            caller on ``executors.workers``.
        finalargs: Arguments for ``finalizer``.
        threads_per_worker: Cap on the BLAS/OpenMP threads of each worker
            process (not Dask's option of that name, which is the number
            of task threads: one here); ``"auto"``: ``max(1, cpus //
            max_workers)``; ``None``: Dask's own (one, by its
            ``distributed.nanny.pre-spawn-environ``).
        forward_logs: Send the records that tasks log to this process's
            loggers (the local cluster's workers).

    ``max_workers``, ``allowed_failures``, ``dashboard_address``,
    ``mp_context`` and ``cluster_options`` configure the local cluster: they
    are refused with ``address`` or ``client``; ``security`` with ``client``.
    On a remote cluster ``worker_id()`` is ``None`` and log records stay on
    the workers (``Client.forward_logging()`` brings them), and
    ``threads_per_worker`` is the cluster's own; ``worker_state()`` and
    ``finalizer`` work there too.

    Raises:
        ImportError: The local cluster would need ``cryptography``.
    """

    backend = "dask"
    # stops_timed_out_tasks, kills_single_task, terminates_workers,
    # worker_identity's worker_id(), forwards_logs and limits_worker_threads
    # need the worker processes: the local cluster's only. Recycling is not
    # Dask's memory_limit, which kills a worker in the middle of its task.
    capabilities = Capabilities(
        cancels_queued=True,
        survives_worker_death=True,
        retries_lost_tasks=True,
        task_control=True,
        stops_timed_out_tasks=True,
        kills_single_task=True,
        terminates_workers=True,
        worker_identity=True,
        worker_finalizer=True,
        forwards_logs=True,
        limits_worker_threads=True,
        nested_executors=True,
    )
    _calls: CallQueue

    @classmethod
    def _workers_start_method(cls, options: Mapping[str, Any]) -> str | None:
        """How the nannies start workers, for :mod:`executors._mainmodule`."""
        if options.get("address") is not None or options.get("client") is not None:
            return None  # a remote cluster's workers are not started here
        if options.get("mp_context") is None:
            method: str = dask.config.get(START_METHOD_KEY)
            return method
        return start_method_of(options.get("mp_context"))

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        address: str | None = None,
        client: distributed.Client | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        allowed_failures: int | None = None,
        max_in_flight: int | None = None,
        dashboard_address: str | None = None,
        mp_context: str | multiprocessing.context.BaseContext | None = None,
        cluster_options: Mapping[str, Any] | None = None,
        connect_timeout: float = 30.0,
        security: Security | None = None,
        cloudpickle: bool = True,
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        threads_per_worker: int | str | None = "auto",
        forward_logs: bool = True,
    ) -> None:
        self._options = check_options(
            max_workers=max_workers,
            address=address,
            client=client,
            initializer=initializer,
            initargs=initargs,
            allowed_failures=allowed_failures,
            max_in_flight=max_in_flight,
            dashboard_address=dashboard_address,
            mp_context=mp_context,
            cluster_options=cluster_options,
            security=security,
        )
        timeout = check_timeout(connect_timeout, "connect_timeout")
        self._settings = WorkerSettings(
            workers=self._options.workers,
            finalizer=finalizer,
            finalargs=finalargs,
            threads_per_worker=threads_per_worker,
            forward_logs=forward_logs,
        )
        super().__init__(max_workers=self._options.workers, cloudpickle=cloudpickle)
        self._max_in_flight = max_in_flight
        if initializer is not None:
            initializer = self._prepare(initializer)
        if finalizer is not None:
            self._settings.finalizer = self._prepare(finalizer)
        # Pickled now: a bad initializer fails create(); only workers unpickle.
        # The worker spec is pickled at the start (its listener starts then).
        dumps((initializer, initargs, self._settings.finalizer, finalargs))
        self._initializer = initializer, initargs
        self._dispatch = dispatch = Dispatch(self._options.workers)
        self._calls = dispatch.calls = CallQueue(
            dispatch.launch,
            dispatch.window,
            chunk_window=dispatch.chunk_window,
            on_idle=dispatch.finish,
            translate=translate,
            stop=dispatch.stop_call,
            retries_crashes=True,
        )
        self._close_when_collected(dispatch.abandon)
        self._start_lock = threading.Lock()
        self._manager: Dispatch | None = None  # once its thread has started
        # A cluster we did not start, until the first submit hands it over.
        self._remote: Runtime | None = None
        self._threads: Callable[[], int] | None = None
        if address is not None:
            client = connect(address, timeout, security)
        if client is not None:
            self._remote = Runtime(
                client, close_client=address is not None, address=address
            )
            self._threads = self._remote.thread_count
            # For repr() and chunking: what the cluster has now.
            self._max_workers = max(1, self._threads())

    @property
    def max_workers(self) -> int:
        """Worker threads: the local cluster's size, or what a remote one has now."""
        return self._max_workers if self._threads is None else max(1, self._threads())

    def _map_workers(self) -> int:
        return self.max_workers

    def _submit(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        chunk: bool = False,
    ) -> Future[T]:
        label = f"map_{_label(args[0])}" if chunk else _label(fn)
        # The shared objects the arguments hold become the task's Dask
        # dependencies (see _shared).
        with collecting() as shared:
            future = self._calls.submit_pickled(
                fn,
                args,
                kwargs,
                chunk=chunk,
                wrap=lambda payload: (payload, label, tuple(shared)),
            )
        if not future.running() and not future.done():
            # Queued: the manager looks for room while calls wait.
            self._dispatch.wake()
        return future

    def _submit_chunk(
        self, fn: Callable[..., Any], chunk: _map.Chunk
    ) -> Future[_map.ChunkResult]:
        return self._submit(_map.run_chunk, (fn, chunk), {}, chunk=True)

    def share(self, obj: Any) -> Any:
        """Place ``obj`` on every worker once: Dask's scatter with broadcast.

        Returns a handle that each task receives as the object (read from
        its worker's memory, not sent with the task); ``handle.release()``
        lets Dask forget it, and ``shutdown()`` releases what is left. A
        worker that joins the cluster later fetches it from another one.
        """
        self._start()
        manager = self._manager
        if manager is None:  # pragma: no cover - _start raised instead
            raise RuntimeError("cannot schedule new futures after shutdown")
        future = manager.runtime.client.scatter(obj, broadcast=True, hash=False)
        handle = DaskShared(future, obj)
        with self._lock:
            if self._shared is None:
                self._shared = weakref.WeakSet()
            self._shared.add(handle)
        return handle

    def _interrupt(self) -> None:
        # Ctrl-C leaving a `with` block: stop now, not after the tasks.
        manager = self._manager
        if manager is not None:
            manager.interrupt()

    def _signal_workers(self, sig: Any) -> None:
        # Only the local cluster's workers are ours; remote tasks were failed.
        manager = self._manager
        if manager is not None:
            manager.runtime.interrupted = True
            manager.runtime.signal_workers(sig)

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            remote, self._remote = self._remote, None
            if remote is not None and remote.close_client:
                # Connected at construction, never used: the manager closes it.
                self._dispatch.runtime = remote
                self._manager = self._dispatch
                self._dispatch.start()
        self._calls.close(cancel_futures)
        if not wait:
            return
        # A first submit starting the cluster now sees the shutdown flag
        # when done, and closes the cluster itself.
        with self._start_lock:
            manager = self._manager
        if manager is not None:
            self._calls.wait_idle()
            join_unless_current(manager)

    def _start(self) -> None:
        # The base calls this outside its lock and before map's deadline:
        # the cluster takes a second or two to start.
        with self._start_lock:
            with self._lock:
                self._check_open()
                if self._manager is not None:
                    return
                runtime, self._remote = self._remote, None
            runtime = runtime or start_local_cluster(self._options)
            dispatch = self._dispatch
            try:
                self._register_initializer(runtime)
                with self._lock:
                    # shutdown() may have come while the cluster started.
                    refused = self._shutdown_started
                    if not refused:
                        dispatch.attach(runtime, self._max_in_flight)
                        self._manager = dispatch
                        dispatch.start()
            except BaseException as exc:
                # No manager thread to close the runtime: close it here, so
                # that after Ctrl-C the next submit starts the only cluster
                # (or, on a remote one, tries the same client again).
                if dispatch.ident is None:
                    self._manager = None
                    runtime.interrupted = not isinstance(exc, Exception)
                    runtime.close()
                    if runtime.cluster is None:
                        self._remote = runtime
                raise
            if refused:
                runtime.close()
                raise RuntimeError("cannot schedule new futures after shutdown")

    def _register_initializer(self, runtime: Runtime) -> None:
        initializer, initargs = self._initializer
        if runtime.cluster is not None:
            # Our cluster: every worker is ours, on this machine.
            spec = self._settings.spec()
            runtime.settings = self._settings
        elif initializer is not None or self._settings.finalizer is not None:
            # Somebody else's: no slots, no listener, its own thread caps.
            spec = self._settings.spec(slots=None, threads=None, log_address=None)
        else:
            return
        payload = dumps((initializer, initargs, spec))
        name = f"executors-initializer-{uuid.uuid4().hex}"
        if runtime.cluster is None:
            # First: the plugin must not outlive our client, even if this
            # process dies before shutdown() removes it.
            forget = _scheduler_side.ForgetWithClient(runtime.client.id, name)
            try:
                runtime.client.register_plugin(forget, name=forget.name)
                runtime.forget = forget.name
            except Exception:  # a scheduler that takes no pickles
                runtime.forget = None  # then shutdown() alone removes it
        runtime.plugin = name
        try:
            runtime.client.register_plugin(InitializerPlugin(name, payload), name=name)
        except Exception as exc:
            make_error = functools.partial(_initializer_failed, summarize(exc), exc)
            self._calls.break_(make_error)
            raise make_error() from exc


def _initializer_failed(summary: str, cause: BaseException) -> BaseException:
    error = initializer_error("dask", None, summary)
    error.__cause__ = cause
    return error


def _label(fn: Callable[..., Any]) -> str:
    target = unwrap(fn)
    name = getattr(target, "__name__", None) or type(target).__name__
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "task"
