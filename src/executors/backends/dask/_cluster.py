"""The client and local cluster an executor holds; a failed start leaves nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any

import dask
import distributed
from distributed.core import Status
from distributed.security import Security

from ..._errors import DaskClusterError
from ..._workers import WorkerSettings
from ._options import LocalOptions
from ._quiet import HEALTH_ONLY_ROUTES, quiet_handshakes, serve_health_only

__all__ = ["Runtime", "connect", "start_local_cluster"]

#: How long a busy worker gets to stop on Ctrl-C before its nanny kills it.
INTERRUPT_CLOSE_SECONDS = 0.5
#: How long closing our client or cluster may take before we give up on it.
CLOSE_TIMEOUT_SECONDS = 10.0
#: How long we wait for the cluster's event loop (to stop a task, tear down).
LOOP_TIMEOUT_SECONDS = 5.0
#: How long stopping a task waits for its submission to reach the scheduler.
ARRIVAL_SECONDS = 2.0
#: How long our scheduler tries to connect to a worker (Dask's default: 30 s).
WORKER_CONNECT_SECONDS = 5.0
#: How often a remote cluster's thread count is re-read (a round trip).
CAPACITY_REFRESH_SECONDS = 0.5

# The module our workers import as a Dask preload (its dask_setup() runs).
_PRELOAD = "executors.backends.dask._worker"
START_METHOD_KEY = "distributed.worker.multiprocessing-method"
#: Folders of our local clusters: Dask's workspace, where workers spill
#: pickled data, and the scheduler's (Dask's default is the shared
#: $TMPDIR/dask-scratch-space, which another user may have created).
SCRATCH_PREFIX = "executors-dask-"
#: How long removing the folder waits for its watcher to exit.
WATCHER_EXIT_SECONDS = 5.0
# The watcher of a cluster's folder: it reads its stdin, a pipe that only
# the caller holds, to the end, which comes when the caller closes the
# cluster or dies (even by SIGKILL), and removes the folder. A terminal's
# Ctrl-C or SIGTERM leaves it to that.
_WATCHER = """
import shutil, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.stdin.buffer.read()
shutil.rmtree(sys.argv[1], ignore_errors=True)
time.sleep(0.1)  # a worker still exiting may have written since
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


class Scratch:
    """Our cluster's private folder: removed at close, or when the caller dies.

    Made 0700 by mkdtemp. A small watcher process removes it once the
    caller is gone, however it ended.
    """

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix=SCRATCH_PREFIX)
        self._watcher: subprocess.Popen[bytes] | None = None
        if not sys.executable:  # embedded: removed at close only
            return
        try:
            self._watcher = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHER, self.path],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # Out of the caller's process group: a SIGKILL sent to the
                # whole group must leave it to remove the folder.
                start_new_session=True,
            )
        except OSError:
            pass  # no Python to run it: removed at close only
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def remove(self) -> None:
        # Dask puts each workspace on sys.path, and takes it off only if it
        # is still first there: once the folder is gone anyone could make
        # one of that name, and the modules in it would be imported here.
        inside = self.path + os.sep
        sys.path[:] = [
            entry
            for entry in sys.path
            if entry != self.path and not entry.startswith(inside)
        ]
        shutil.rmtree(self.path, ignore_errors=True)
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        if watcher.stdin is not None:
            with contextlib.suppress(OSError):
                watcher.stdin.close()
        if not os.path.exists(self.path):
            # Its work is done: waiting for it would cost its 0.1 s pause
            # for workers still exiting, and ours are gone.
            watcher.kill()
        try:
            watcher.wait(WATCHER_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait()


@dataclass(eq=False)
class Runtime:
    """A connected client, maybe our local cluster, and how to close them."""

    client: Any
    cluster: Any = None
    close_client: bool = False
    scratch: Scratch | None = None  # our local cluster's folder
    plugin: str | None = None
    address: str | None = None  # the scheduler's, when we connected to it
    # On a remote scheduler: the plugin that removes ours when our client goes.
    forget: str | None = None
    # Ctrl-C: stop the workers now (a nanny waits 4 s for a busy worker).
    interrupted: bool = False
    threads: int = 0  # a remote cluster's, as last read
    threads_read_at: float = -CAPACITY_REFRESH_SECONDS
    # Our workers' settings: their log listener closes after them.
    settings: WorkerSettings | None = None

    def close(self) -> None:
        if self.interrupted and self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.sync(_close_nannies, self.cluster)
        if self.plugin is not None and self.cluster is None:
            # Not our cluster: its later workers must not run our initializer.
            with contextlib.suppress(Exception):
                self.client.unregister_worker_plugin(self.plugin)
        if self.forget is not None:
            with contextlib.suppress(Exception):
                self.client.unregister_scheduler_plugin(self.forget)
        if self.close_client:
            with contextlib.suppress(Exception):
                self.client.close(timeout=CLOSE_TIMEOUT_SECONDS)
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=CLOSE_TIMEOUT_SECONDS)
            except Exception:
                # Timed out, on a very busy machine: its workers must not
                # outlive it (nor run on in the folder removed below).
                _abandon(self.cluster)
            quiet_handshakes.forget(self.cluster)
        if self.scratch is not None:
            self.scratch.remove()
        if self.settings is not None:
            # The workers are gone: their last records have come (or never
            # will, if they were killed).
            self.settings.close(wait=not self.interrupted)

    def lost_scheduler(self) -> DaskClusterError:
        """The error of a task whose client lost its scheduler for good."""
        where = f" at {self.address}" if self.address else ""
        return DaskClusterError(
            f"lost the connection to the Dask scheduler{where} and could not "
            "reconnect within connect_timeout: the scheduler died, or its "
            "machine or the network is down"
        )

    def thread_count(self) -> int:
        """A remote cluster's threads, re-read if old: not from the event loop."""
        now = time.monotonic()
        if now - self.threads_read_at >= CAPACITY_REFRESH_SECONDS:
            self.threads_read_at = now
            with contextlib.suppress(Exception):
                info = self.client.scheduler_info(n_workers=0)
                self.threads = int(info["total_threads"])
        return self.threads

    def stop_task(self, key: str) -> bool:
        """Kill the worker running ``key``, forgotten first so it runs nowhere else."""
        return bool(self._on_loop(_stop_task, self.cluster, self.client.id, key))

    def signal_workers(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every worker process of the local cluster, if any."""
        self._on_loop(_signal_workers, self.cluster, sig)

    def _on_loop(self, fn: Any, *args: Any) -> Any:
        if self.cluster is None:
            return None  # a remote cluster's workers are out of reach
        loop = self.cluster.loop.asyncio_loop
        if loop is None or loop.is_closed():
            return None
        pending = asyncio.run_coroutine_threadsafe(fn(*args), loop)
        try:
            return pending.result(LOOP_TIMEOUT_SECONDS)
        except Exception:
            pending.cancel()
            return None


async def _stop_task(cluster: Any, client_id: str, key: str) -> bool:
    scheduler = cluster.scheduler
    # Not settled yet: the key is there or on its way (Dask batches messages).
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
            return _kill(nanny, signal.SIGKILL)
    return False


async def _signal_workers(cluster: Any, sig: signal.Signals) -> None:
    for nanny in list(cluster.workers.values()):
        # Then the nanny closes when its worker exits, instead of restarting it.
        nanny.status = Status.closing_gracefully
        _kill(nanny, sig)


def _kill(nanny: Any, sig: signal.Signals) -> bool:
    process = getattr(nanny, "process", None)
    if process is None or process.pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, sig)
    return True


async def _close_nannies(cluster: Any, scheduler: bool = False) -> None:
    """On the loop: close every nanny now, even those ``close()`` would skip.

    With ``scheduler`` (a start that failed or was interrupted) every worker
    process is killed first, and again after the nannies closed.
    """
    if scheduler:
        _kill_worker_processes(cluster)
    # Nannies still starting are only in _created.
    nannies = {*cluster._created, *cluster.workers.values()}
    await asyncio.gather(
        *(
            nanny.close(timeout=INTERRUPT_CLOSE_SECONDS, reason="executors-stop")
            for nanny in nannies
        ),
        return_exceptions=True,
    )
    if scheduler:
        # A nanny whose start was still running may have spawned since.
        _kill_worker_processes(cluster)
        if cluster.scheduler is not None:  # maybe half-started
            with contextlib.suppress(Exception):
                await cluster.scheduler.close()


def _kill_worker_processes(cluster: Any) -> None:
    """On the loop: SIGKILL each worker process a nanny started or is starting.

    Closing a nanny whose worker is still starting first waits for that worker
    to connect, which on a loaded machine outlasts our bound; the processes
    would then outlive the abandoned cluster.
    """
    for nanny in {*cluster._created, *cluster.workers.values()}:
        worker = getattr(nanny, "process", None)  # the nanny's WorkerProcess
        process = getattr(worker, "process", None)  # its AsyncProcess
        if process is not None:
            # Queued to the process's own thread behind its start, so a
            # process still being spawned is killed once it exists.
            with contextlib.suppress(Exception):
                process.kill()


def start_local_cluster(options: LocalOptions) -> Runtime:
    """Start our local cluster and a client; else DaskClusterError, nothing left."""
    scheduler_options: dict[str, Any] = {"allowed_failures": options.allowed_failures}
    if options.dashboard_address is None:
        # The scheduler serves health routes even without a dashboard,
        # by default on port 8787 of every interface; keep it private.
        scheduler_options.update(dashboard=False, dashboard_address="127.0.0.1:0")
    cluster_options = dict(options.cluster_options)
    scheduler_options.update(cluster_options.pop("scheduler_kwargs", None) or {})
    private: dict[str, Any] = {}
    if options.dashboard_address is None:
        # Read by the scheduler as it starts, and copied by each nanny into
        # the configuration of every worker it starts or restarts.
        private = {
            "distributed.scheduler.http.routes": HEALTH_ONLY_ROUTES,
            "distributed.worker.http.routes": HEALTH_ONLY_ROUTES,
        }
    # Passing preload replaces Dask's configured list: keep it after ours.
    preload = cluster_options.pop("preload", None)
    if preload is None:
        preload = dask.config.get("distributed.worker.preload")
    if isinstance(preload, str):
        preload = [preload]
    if options.start_method is not None:
        dask.config.set({START_METHOD_KEY: options.start_method})
    # Mutual TLS: scheduler, nannies and workers accept only peers that
    # hold this key, which only this process and its workers ever see.
    security = options.security
    if security is None:
        security = Security.temporary()  # type: ignore[no-untyped-call]
    # Dask puts its dask-scratch-space in it.
    scratch = Scratch()
    scheduler_options.setdefault("local_directory", scratch.path)
    cluster_options.setdefault("local_directory", scratch.path)
    cluster: Any = None
    client: Any = None
    try:
        # Set only while the cluster starts: Dask reads it then.
        with dask.config.set(private):
            cluster = distributed.LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=options.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                security=security,
                dashboard_address=options.dashboard_address,
                scheduler_kwargs=scheduler_options,
                preload=[_PRELOAD, *preload],
                **cluster_options,
            )
        quiet_handshakes.watch(cluster)
        if options.dashboard_address is None:
            serve_health_only(cluster.scheduler)
        # A result is fetched from its worker by the scheduler; one fetched
        # from a worker that just died would retry the connection for
        # Dask's 30 s connect timeout, and its future wait as long, though
        # the result was computed again elsewhere in a few seconds.
        cluster.scheduler.rpc.timeout = WORKER_CONNECT_SECONDS
        client = distributed.Client(  # type: ignore[no-untyped-call]
            cluster, set_as_default=False
        )
    except BaseException as exc:
        # Ctrl-C included: nothing of it may outlive this call, or the next
        # submit would start a second cluster beside it.
        _tear_down_half_built(exc, cluster, client)
        if cluster is not None:
            quiet_handshakes.forget(cluster)
        scratch.remove()
        if not isinstance(exc, Exception):
            raise
        raise DaskClusterError(
            f"could not start the local Dask cluster: {exc!r}"
        ) from exc
    return Runtime(client, cluster, close_client=True, scratch=scratch)


def connect(address: str, timeout: float | None, security: Security | None) -> Any:
    """Connect a client to the scheduler at ``address``; leave nothing on failure."""
    try:
        return distributed.Client(  # type: ignore[no-untyped-call]
            address, timeout=timeout, security=security, set_as_default=False
        )
    except BaseException as exc:
        _tear_down_half_built(exc)
        raise


def _tear_down_half_built(
    exc: BaseException, cluster: Any = None, client: Any = None
) -> None:
    """Close the client and cluster whose start failed with ``exc``.

    One whose ``__init__`` failed keeps its loop thread (a cluster, its
    processes) running: it is the ``self`` of a frame of the traceback.
    """
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        found = frame.f_locals.get("self")
        if client is None and isinstance(found, distributed.Client):
            client = found
        if cluster is None and isinstance(found, distributed.SpecCluster):
            cluster = found
    if client is not None:
        with contextlib.suppress(Exception):
            client.close()
            client._loop_runner.stop()
    if cluster is not None:
        _abandon(cluster)


def _abandon(cluster: Any) -> None:
    """Close a half-started cluster within a bound, even through Ctrl-C."""
    pending: Any = None
    loop: Any = None
    with contextlib.suppress(Exception):  # interrupted before it had a loop
        loop = cluster.loop.asyncio_loop
    if loop is not None and not loop.is_closed():
        pending = asyncio.run_coroutine_threadsafe(
            _close_nannies(cluster, scheduler=True), loop
        )
    deadline = time.monotonic() + LOOP_TIMEOUT_SECONDS
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
            # Marks it closed (no warning, no second close at exit).
            with contextlib.suppress(Exception):
                cluster.close(timeout=LOOP_TIMEOUT_SECONDS)
        except KeyboardInterrupt:
            continue
        break
    # A close that timed out does not stop the loop thread itself.
    with contextlib.suppress(Exception):
        cluster._loop_runner.stop()
