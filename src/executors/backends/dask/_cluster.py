"""The Dask side the executor holds: a client, and maybe a local cluster.

:func:`start_local_cluster` starts the private :class:`distributed.LocalCluster`
(127.0.0.1, mutual TLS with a throw-away certificate, workers that ignore
Ctrl-C), :func:`connect` a client to a running scheduler; either tears down
what it half built when it fails or is interrupted, so no worker, event loop
thread or second cluster is left behind. :class:`Runtime` is what was
connected and knows how to close it, stop one task's worker, and signal
every worker process of the local cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any, TypeVar

import dask
import distributed
from distributed.core import Status
from distributed.security import Security

from ..._errors import DaskClusterError

__all__ = [
    "NO_TLS_MESSAGE",
    "Runtime",
    "ThreadCount",
    "connect",
    "looks_like_host_port",
    "start_local_cluster",
    "tls_available",
]

T = TypeVar("T")

#: How long a busy worker of our local cluster gets to stop on Ctrl-C
#: before its nanny kills it.
INTERRUPT_CLOSE_SECONDS = 0.5
#: How long closing our client or cluster may take before we give up on it.
CLOSE_TIMEOUT_SECONDS = 10.0
#: How long tearing down a cluster whose start was interrupted may take.
#: Its nannies get INTERRUPT_CLOSE_SECONDS to stop their workers, then kill
#: them; the rest is the scheduler closing.
ABANDON_TIMEOUT_SECONDS = 5.0
#: How long stopping one task's worker may wait for the cluster's event
#: loop (busy scheduling, never blocked) before giving up.
STOP_TIMEOUT_SECONDS = 5.0
#: How long stopping a task waits for its submission to reach the scheduler.
ARRIVAL_SECONDS = 2.0
#: How often a remote cluster's thread count is re-read; each read is a
#: round trip to the scheduler.
CAPACITY_REFRESH_SECONDS = 0.5

# The workers of our local cluster import this module as a Dask preload,
# which runs its dask_setup() as each worker starts.
_PRELOAD = "executors.backends.dask._worker"
START_METHOD_KEY = "distributed.worker.multiprocessing-method"


@dataclass(eq=False)
class Runtime:
    """A connected client and what closing it involves."""

    client: Any
    cluster: Any = None
    close_client: bool = False
    plugin: str | None = None
    # Set on Ctrl-C: stop the local cluster's workers without letting them
    # finish their tasks (a nanny otherwise waits 4 s for a busy worker).
    interrupted: bool = False

    def close(self) -> None:
        client = self.client
        if self.interrupted and self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.sync(_stop_workers_now, self.cluster)
        if self.plugin is not None and self.cluster is None:
            # On a cluster we do not own, our initializer must not keep
            # running on the workers that join after us.
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(self.plugin)
        if self.close_client:
            with contextlib.suppress(Exception):
                client.close(timeout=CLOSE_TIMEOUT_SECONDS)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=CLOSE_TIMEOUT_SECONDS)

    def stop_task(self, key: str) -> bool:
        """Stop the task ``key`` by killing the worker process that runs it.

        Local cluster only; from any thread but the event loop's. On the
        loop, in one step: the scheduler forgets the key first (so it is
        never handed to another worker, as Dask does with a lost task),
        then the worker running it gets SIGKILL and its nanny starts a
        fresh one. Returns False where it cannot (a remote cluster, a
        closed one).
        """
        if self.cluster is None:
            return False
        return bool(self._on_loop(_stop_task, self.cluster, self.client.id, key))

    def signal_workers(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every worker process of the local cluster.

        Their nannies (in this process) are told first not to start new
        ones. A remote cluster's workers cannot be reached: nothing is sent.
        """
        if self.cluster is not None:
            self._on_loop(_signal_workers, self.cluster, sig)

    def _on_loop(self, fn: Any, *args: Any) -> Any:
        loop = self.cluster.loop.asyncio_loop
        if loop is None or loop.is_closed():
            return None
        pending = asyncio.run_coroutine_threadsafe(fn(*args), loop)
        try:
            return pending.result(STOP_TIMEOUT_SECONDS)
        except Exception:
            pending.cancel()
            return None


async def _stop_task(cluster: Any, client_id: str, key: str) -> bool:
    scheduler = cluster.scheduler
    # The task's outcome has not reached us, so the scheduler holds the key
    # or is about to: the client may not have sent the submit yet (Dask
    # batches its messages).
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while (task := scheduler.tasks.get(key)) is None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    worker = task.processing_on
    scheduler.stimulus_cancel(
        [key], client_id, force=True, reason="executors-stop", msg="stopped"
    )
    if worker is None:
        return True  # waiting for a worker: cancelled before it ran
    for nanny in cluster.workers.values():
        if getattr(nanny, "worker_address", None) == worker.address:
            pid = nanny.process.pid if nanny.process is not None else None
            if pid is None:
                return False
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return True
    return False


async def _signal_workers(cluster: Any, sig: signal.Signals) -> None:
    for nanny in list(cluster.workers.values()):
        process = getattr(nanny, "process", None)
        pid = process.pid if process is not None else None
        # A nanny closing gracefully closes when its worker exits, instead
        # of starting another.
        nanny.status = Status.closing_gracefully
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


async def _stop_workers_now(cluster: Any) -> None:
    """On the cluster's loop: close every nanny, killing busy workers soon."""
    nannies = list(cluster.workers.values())
    await asyncio.gather(
        *(
            nanny.close(timeout=INTERRUPT_CLOSE_SECONDS, reason="executors-interrupt")
            for nanny in nannies
        ),
        return_exceptions=True,
    )


class ThreadCount:
    """A remote cluster's worker threads, re-read at most every so often.

    Each read is a round trip to the scheduler: never call it from the
    client's event loop thread. :attr:`value` is the last count read.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.value = 0
        self.when = -CAPACITY_REFRESH_SECONDS

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self.when >= CAPACITY_REFRESH_SECONDS:
            self.when = now
            with contextlib.suppress(Exception):
                info = self.client.scheduler_info(n_workers=0)
                self.value = int(info["total_threads"])
        return self.value


def start_local_cluster(
    *,
    workers: int,
    allowed_failures: int,
    dashboard_address: str | None,
    start_method: str | None,
    cluster_options: dict[str, Any],
    security: Security | None,
) -> Runtime:
    """Start our private local cluster and a client on it.

    Raises:
        DaskClusterError: It failed to start (nothing of it is left).
    """
    scheduler_options: dict[str, Any] = {"allowed_failures": allowed_failures}
    if dashboard_address is None:
        # The scheduler serves health routes even without a dashboard,
        # by default on port 8787 of every interface; keep it private.
        scheduler_options.update(dashboard=False, dashboard_address="127.0.0.1:0")
    options = dict(cluster_options)
    scheduler_options.update(options.pop("scheduler_kwargs", None) or {})
    # Passing preload replaces Dask's configured list: keep it after ours.
    preload = options.pop("preload", None)
    if preload is None:
        preload = dask.config.get("distributed.worker.preload")
    if isinstance(preload, str):
        preload = [preload]
    if start_method is not None:
        dask.config.set({START_METHOD_KEY: start_method})
    # Mutual TLS: scheduler, nannies and workers accept only peers that
    # hold this key, which only this process and its workers ever see.
    if security is None:
        security = Security.temporary()  # type: ignore[no-untyped-call]
    cluster: Any = None
    client: Any = None
    try:
        cluster = distributed.LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            security=security,
            dashboard_address=dashboard_address,
            scheduler_kwargs=scheduler_options,
            preload=[_PRELOAD, *preload],
            **options,
        )
        client = distributed.Client(  # type: ignore[no-untyped-call]
            cluster, set_as_default=False
        )
    except BaseException as exc:
        # Ctrl-C while the cluster starts included: its workers, scheduler
        # and event loop thread must not outlive this call, and the next
        # submit must not find a second cluster running beside it.
        cluster = cluster or _half_built(exc, distributed.SpecCluster)
        client = client or _half_built(exc, distributed.Client)
        if cluster is not None:
            _abandon(cluster, client)
        elif client is not None:
            _close_half_built_client(client)
        if not isinstance(exc, Exception):
            raise
        raise DaskClusterError(
            f"could not start the local Dask cluster: {exc!r}"
        ) from exc
    return Runtime(client, cluster, close_client=True)


def connect(address: str, timeout: float | None, security: Security | None) -> Any:
    """Connect a client to the scheduler at ``address``.

    When the connection fails, Dask's half-built client keeps its event
    loop thread running and is out of reach: close it, so a failed
    ``create()`` leaves nothing behind.
    """
    try:
        return distributed.Client(  # type: ignore[no-untyped-call]
            address, timeout=timeout, security=security, set_as_default=False
        )
    except BaseException as exc:
        client = _half_built(exc, distributed.Client)
        if client is not None:
            _close_half_built_client(client)
        raise


def _half_built(exc: BaseException, kind: type[T]) -> T | None:
    """The ``kind`` whose construction ``exc`` interrupted, if any.

    A Dask client or cluster whose ``__init__`` fails (a refused
    connection, Ctrl-C while it starts) keeps its event loop thread, and
    a cluster its processes, while the caller never gets the object: it is
    the ``self`` of a frame of the traceback.
    """
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, kind):
            return candidate
    return None


def _close_half_built_client(client: Any) -> None:
    with contextlib.suppress(Exception):
        client.close()
        client._loop_runner.stop()


async def _tear_down(cluster: Any) -> None:
    """On the cluster's loop: stop every worker and the scheduler, now.

    For a cluster whose start was interrupted: the nannies still starting
    are known only to ``_created`` (Dask adds a nanny to ``workers`` once
    its start completes), and ``close()`` would skip both them and a
    scheduler that never finished starting.
    """
    nannies = {*cluster._created, *cluster.workers.values()}
    await asyncio.gather(
        *(
            nanny.close(timeout=INTERRUPT_CLOSE_SECONDS, reason="executors-abandon")
            for nanny in nannies
        ),
        return_exceptions=True,
    )
    scheduler = cluster.scheduler
    if scheduler is not None:
        with contextlib.suppress(Exception):
            await scheduler.close()


def _abandon(cluster: Any, client: Any) -> None:
    """Close a local cluster whose start failed or was interrupted.

    Bounded, and finished even if a second Ctrl-C comes meanwhile (the
    first one is re-raised by the caller): a half-closed cluster would keep
    its worker processes and event loop thread for the program's lifetime.
    """
    if client is not None:
        _close_half_built_client(client)
    pending: Any = None
    loop: Any = None
    with contextlib.suppress(Exception):  # interrupted before it had a loop
        loop = cluster.loop.asyncio_loop
    if loop is not None and not loop.is_closed():
        pending = asyncio.run_coroutine_threadsafe(_tear_down(cluster), loop)
    deadline = time.monotonic() + ABANDON_TIMEOUT_SECONDS
    while pending is not None:
        try:
            pending.result(timeout=max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt:
            continue
        except BaseException:
            pending.cancel()
        break
    while True:
        try:
            # Marks it closed (no "unclosed cluster" warning, no second close
            # at exit) and stops its event loop thread.
            with contextlib.suppress(Exception):
                cluster.close(timeout=ABANDON_TIMEOUT_SECONDS)
        except KeyboardInterrupt:
            continue
        break
    # A close that timed out does not stop the loop thread itself.
    with contextlib.suppress(Exception):
        cluster._loop_runner.stop()


def tls_available() -> bool:
    """Whether ``cryptography`` (for ``Security.temporary()``) is installed."""
    try:
        return importlib.util.find_spec("cryptography") is not None
    except (ImportError, ValueError):  # ValueError: a stubbed-out module
        return False


NO_TLS_MESSAGE = (
    "the 'dask' backend secures its local cluster with TLS and a throw-away "
    "certificate, which needs the 'cryptography' package: "
    'pip install "executors[dask]" (or pip install cryptography). Without it, '
    "pass security=distributed.security.Security() to run the cluster without "
    "TLS, where any user of this machine who finds its ports can run code in "
    "this process and its workers."
)


def looks_like_host_port(address: str) -> bool:
    """``HOST:PORT`` or ``:PORT``, with a valid port number."""
    host, sep, port = address.rpartition(":")
    return bool(sep) and port.isdigit() and int(port) < 65536 and " " not in host
