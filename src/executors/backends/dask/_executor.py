"""The ``dask`` executor: :class:`DaskExecutor` on the shared call queue."""

from __future__ import annotations

import multiprocessing.context
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from traceback import format_exception_only
from typing import Any, TypeVar

import distributed
from distributed.security import Security

from ... import _map
from ..._base import BaseExecutor
from ..._callqueue import CallQueue
from ..._capabilities import Capabilities
from ..._futures import Future as OurFuture
from ..._futures import settle
from ..._lifecycle import ending_on_keyboard_interrupt, join_unless_current
from ..._options import check_timeout
from ..._outcome import dumps, initializer_error
from ..._serialize import unwrap
from ._cluster import Runtime, ThreadCount, connect, start_local_cluster
from ._dispatch import Dispatch, Manager, translate
from ._options import check_options
from ._worker import InitializerPlugin

__all__ = ["DaskExecutor"]

T = TypeVar("T")


class DaskExecutor(BaseExecutor):
    """Tasks run on a Dask cluster, a local one unless told otherwise.

    Args:
        max_workers: Worker processes of the local cluster (one thread
            each); default: the usable CPUs. Not allowed with ``address`` or
            ``client``, whose workers are what the cluster has.
        address: A scheduler address such as ``"tcp://10.0.0.5:8786"``:
            connect to that cluster (at construction) instead of starting
            one. Shutdown closes only our client. The cluster unpickles what
            this process sends and sends pickles back: trust it as you
            trust this process.
        client: A synchronous :class:`distributed.Client` to reuse. Shutdown
            closes nothing of it.
        initializer: Called in every worker process, including workers that
            join or restart later. If it fails the executor is broken.
        initargs: Arguments for ``initializer``.
        allowed_failures: How many times a task may be on a worker that dies
            before it fails with :class:`executors.WorkerCrashedError`
            (local cluster only; a remote scheduler keeps its own setting).
        max_in_flight: Tasks handed to Dask at once; default: the cluster's
            worker threads, re-read as workers come and go. Raise it for an
            adaptive cluster, which scales up only when the scheduler sees a
            backlog.
        dashboard_address: Serve Dask's dashboard there, such as
            ``"127.0.0.1:8787"`` (local cluster only; needs bokeh). A port
            without a host (``":8787"``) means 127.0.0.1, not every
            interface as in Dask. Default: no dashboard.
        mp_context: How the local cluster starts worker processes:
            ``"spawn"`` or ``"forkserver"`` (much faster starts and
            restarts), or such a multiprocessing context. Default: Dask's
            setting, ``spawn`` unless configured. Dask reads it from its
            process-wide configuration
            (``distributed.worker.multiprocessing-method``) whenever a
            worker (re)starts, so setting it changes that configuration for
            every local Dask cluster of the process.
        cluster_options: More keyword arguments for
            :class:`distributed.LocalCluster`, such as ``memory_limit``.
        connect_timeout: Seconds to wait for the scheduler at ``address``.
        security: A :class:`distributed.security.Security`. With
            ``address``: the TLS credentials to connect with. For the local
            cluster: what secures it instead of the default, mutual TLS with
            a certificate made for this cluster, held only in memory by
            this process and its workers (needs ``cryptography``).
            ``Security()`` turns TLS off. Not allowed with ``client``.
        cloudpickle: Send the callable with cloudpickle (lambdas work).

    Raises:
        ImportError: The local cluster would need ``cryptography``, which
            is not installed.
    """

    backend = "dask"
    # Stopping a task (timeouts, kill_task) and terminate_workers() need
    # the worker processes: on the local cluster only. With address= or
    # client= a timed-out task is abandoned and kill_task() returns False.
    capabilities = Capabilities(
        cancels_queued=True,
        survives_worker_death=True,
        retries_lost_tasks=True,
        task_control=True,
        stops_timed_out_tasks=True,
        kills_single_task=True,
        terminates_workers=True,
    )

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
        super().__init__(max_workers=self._options.workers, cloudpickle=cloudpickle)
        self._local = address is None and client is None
        self._max_in_flight = max_in_flight
        self._security = security
        # Pickled now, in the caller: a bad initializer fails create(), and
        # only workers ever unpickle it.
        self._initializer_payload = (
            None
            if initializer is None
            else dumps((self._prepare(initializer), initargs))
        )
        self._dispatch = dispatch = Dispatch(self._options.workers)
        self._calls = dispatch.calls = CallQueue(
            dispatch.launch,
            dispatch.window,
            chunk_window=dispatch.chunk_window,
            on_idle=dispatch.finish,
            translate=translate,
            stop=dispatch.stop,
            retries_crashes=True,
        )
        # Dropped without shutdown(): the queued work runs, then the
        # manager closes the client and cluster.
        weakref.finalize(self, dispatch.abandon, os.getpid()).atexit = False
        self._start_lock = threading.Lock()
        self._manager: Manager | None = None
        self._client: Any = client
        self._owns_client = False
        if address is not None:
            self._client = connect(address, timeout, security)
            self._owns_client = True
        self._threads = None if self._local else ThreadCount(self._client)
        if self._threads is not None:
            # For repr() and chunking: what the cluster has now.
            self._max_workers = max(1, self._threads())

    # -- hooks ------------------------------------------------------------

    @property
    def max_workers(self) -> int:
        """Worker threads: the local cluster's size, or what a remote one has now."""
        if self._threads is None:
            return self._max_workers
        return max(1, self._threads())

    def _map_workers(self) -> int:
        return self.max_workers

    def _broken_error(self) -> BaseException | None:
        return self._calls.broken_error()  # type: ignore[union-attr]

    def _start(self) -> None:
        # The base calls this outside its lock and before map's deadline:
        # the cluster takes a second or two to start.
        self._ensure_started()

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        return self._enqueue(fn, args, kwargs, _label(fn), chunk=False)

    def _submit_chunk(
        self, fn: Callable[..., Any], chunk: _map.Chunk
    ) -> Future[_map.ChunkResult]:
        return self._enqueue(
            _map.run_chunk, (fn, chunk), {}, f"map_{_label(fn)}", chunk=True
        )

    def close_at_exit(self) -> None:
        """At interpreter exit: finish the submitted work, unless Ctrl-C ends it.

        As the base does, and a second Ctrl-C while the exit waits for the
        work stops it too (the map it was interrupted in may have chunks
        that run for many seconds, which Dask would run again on restarted
        workers).
        """
        if not ending_on_keyboard_interrupt():
            try:
                self._shutdown(wait=True, cancel_futures=False)
                return
            except KeyboardInterrupt:
                pass
        self._interrupt()
        self._shutdown(wait=True, cancel_futures=True)

    def _interrupt(self) -> None:
        # Ctrl-C leaving a `with` block: drop the queue, fail what runs and,
        # on a cluster we started, stop the workers now rather than wait for
        # tasks that may run for minutes.
        with self._lock:
            manager = self._manager
        if manager is not None:
            manager.interrupt()

    def _signal_workers(self, sig: Any) -> None:
        # Only the local cluster's worker processes are ours to signal; a
        # remote cluster's tasks were failed, and are cancelled at close.
        with self._lock:
            manager = self._manager
        if manager is not None:
            manager.runtime.interrupted = True
            manager.runtime.signal_workers(sig)

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        calls = self._calls
        assert calls is not None
        closer: threading.Thread | None = None
        with self._lock:
            if self._manager is None and self._owns_client and self._client:
                # Connected at construction, never used: close it as well.
                runtime = Runtime(self._client, close_client=True)
                self._client = None
                closer = threading.Thread(
                    target=runtime.close, name="executors-dask-close", daemon=True
                )
                closer.start()
        calls.close(cancel_futures)
        if not wait:
            return
        join_unless_current(closer)
        # A first submit may be starting the cluster right now; it sees the
        # shutdown flag when done and closes the cluster itself.
        with self._start_lock:
            manager = self._manager
        if manager is not None:
            calls.wait_idle()
            join_unless_current(manager)

    # -- plumbing ----------------------------------------------------------

    def _enqueue(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        label: str,
        *,
        chunk: bool,
    ) -> Future[Any]:
        future: OurFuture[Any] = OurFuture()
        try:
            payload = dumps((fn, args, kwargs))
        except Exception as exc:
            # The other process backends fail the future with the pickling
            # error; so do we, before Dask ever sees the task.
            settle(future, error=exc)
            return future
        self._calls.submit(future, (payload, label), chunk=chunk)  # type: ignore[union-attr]
        if not future.running() and not future.done():
            # Queued: the manager watches for room while calls wait.
            self._dispatch.wake()
        return future

    def _ensure_started(self) -> None:
        with self._lock:
            self._check_open()
            if self._manager is not None:
                return
        with self._start_lock:
            with self._lock:
                self._check_open()
                if self._manager is not None:
                    return
            runtime = self._connect()
            try:
                with self._lock:
                    # shutdown() may have come while the cluster started.
                    refused = self._shutdown_started
                    if not refused:
                        self._start_manager(runtime)
            except BaseException:
                # Ctrl-C before the manager thread, which closes the runtime,
                # could start: close it here, so the next submit starts the
                # only cluster.
                manager = self._manager
                if manager is None or manager.ident is None:
                    self._manager = None
                    runtime.interrupted = True
                    runtime.close()
                raise
            if refused:
                runtime.close()
                raise RuntimeError("cannot schedule new futures after shutdown")

    def _start_manager(self, runtime: Runtime) -> None:
        self._dispatch.attach(runtime, self._capacity_reader(runtime))
        manager = Manager(self._dispatch, runtime, self._threads)
        self._manager = self._dispatch.manager = manager
        manager.start()

    def _connect(self) -> Runtime:
        if self._local:
            options = self._options
            runtime = start_local_cluster(
                workers=options.workers,
                allowed_failures=options.allowed_failures,
                dashboard_address=options.dashboard_address,
                start_method=options.start_method,
                cluster_options=options.cluster_options,
                security=self._security,
            )
        else:
            runtime = Runtime(self._client, close_client=self._owns_client)
            self._client = None
        if self._initializer_payload is not None:
            name = f"executors-initializer-{uuid.uuid4().hex}"
            runtime.plugin = name
            try:
                runtime.client.register_plugin(
                    InitializerPlugin(name, self._initializer_payload), name=name
                )
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    # Ctrl-C while the plugin registers is not the
                    # initializer failing: close quickly, stay usable.
                    runtime.interrupted = True
                    runtime.close()
                    raise
                runtime.close()
                summary = "".join(format_exception_only(type(exc), exc)).strip()
                cause = exc

                def make_error() -> BaseException:
                    error = initializer_error("dask", None, summary)
                    error.__cause__ = cause
                    return error

                self._calls.break_(make_error)  # type: ignore[union-attr]
                raise make_error() from exc
        return runtime

    def _capacity_reader(self, runtime: Runtime) -> Callable[[], int]:
        if self._max_in_flight is not None:
            limit = self._max_in_flight
            return lambda: limit
        if runtime.cluster is not None:
            scheduler = runtime.cluster.scheduler
            # The scheduler runs in this process: its count is live and
            # free to read (workers that restart drop out of it meanwhile).
            return lambda: int(scheduler.total_nthreads)
        threads = self._threads
        if threads is None:
            return lambda: self._max_workers
        # The queue's lock must not wait on the scheduler: read the last
        # count, which the manager thread refreshes while calls run.
        threads()
        return lambda: threads.value


def _label(fn: Callable[..., Any]) -> str:
    target = unwrap(fn)
    name = getattr(target, "__name__", None) or type(target).__name__
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "task"
