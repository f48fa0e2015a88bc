"""Backend ``dask``: a Dask cluster, local by default, remote by address.

Without ``address`` or ``client`` the first ``submit`` or ``map`` starts a
:class:`distributed.LocalCluster` of worker processes (one thread each, on
127.0.0.1, TLS with a throw-away certificate, no dashboard) and
``shutdown()`` closes it. ``address=`` connects to a running scheduler and
closes only our client; ``client=`` reuses the caller's client and closes
nothing of it.

Data flow::

    submit(fn, *args)                                        caller thread
      | (fn, args, kwargs) pickled to bytes here: a pickling error fails the
      | future with the error every other backend raises
      v
    pending deque         <- cancel() and shutdown(cancel_futures) act here
      |
      v   dispatcher: hands a task to Dask only while a worker thread is
      |   free, from submit itself or from the client's event loop the moment
      |   a task finishes; the future turns "running" there
    client.submit(_run_task, payload, pure=False)            Dask scheduler
      |                                         (sees bytes, never unpickles)
      v
    worker process: unpickle, run, pickle the outcome to bytes
      |
      v   a coroutine on the client's event loop gathers the bytes
    events queue -> manager thread "executors-dask": unpickle, resolve the
                    stdlib future, translate KilledWorker into
                    WorkerCrashedError; at the end close client and cluster

Why the payload is bytes: with a ``LocalCluster`` the scheduler runs inside
the caller's process and unpickles every task it receives. An argument that
segfaults or exits while being unpickled would take the caller down, and
one that fails to pickle would surface as Dask's own ``TypeError``. As bytes,
arguments are pickled in the caller (so failures are the usual pickling
errors) and unpickled only in a worker.

Why tasks wait in our own queue rather than in Dask's: a future that Dask has
not seen can be cancelled for certain, so ``cancel()`` is honest; and Dask
counts every task *assigned* to a worker that dies as "suspicious", not only
the one that killed it. Handing over no more tasks than there are worker
threads keeps innocent tasks from being failed along with a crashing one.
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import functools
import importlib.util
import io
import multiprocessing
import multiprocessing.context
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import BrokenExecutor, Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dask
import distributed
from distributed import KilledWorker, WorkerPlugin
from distributed.security import Security

from .. import _map
from .._base import BaseExecutor, fail_futures, notify_cancelled
from .._capabilities import Capabilities
from .._errors import InitializerFailedError, WorkerCrashedError, describe_exitcode
from .._futures import Future as OurFuture
from .._options import (
    check_initializer,
    check_max_workers,
    check_timeout,
    cpu_count,
)
from .._remote import picklable_exception
from .._serialize import unwrap

__all__ = ["DaskClusterError", "DaskExecutor"]

T = TypeVar("T")

#: Retries of a task whose worker died, on the cluster we start. Dask's
#: default (3) makes a task that always crashes kill four workers, each
#: restart costing a second or two; 1 still forgives one unlucky death (an
#: OOM kill caused by a neighbour) and fails a crashing task within seconds.
DEFAULT_ALLOWED_FAILURES = 1
#: How often the manager re-reads a remote cluster's thread count while
#: tasks wait for capacity: workers come and go, and each read is a round
#: trip to the scheduler.
CAPACITY_REFRESH_SECONDS = 0.5
#: How often the manager looks for free worker threads while tasks wait
#: and none seemed free: a restarted worker is used within this delay.
POLL_SECONDS = 0.1
#: How long a finished task's result may stay on its worker after we have
#: it, waiting to be released together with the next hand-over.
RELEASE_SECONDS = 0.05
#: How long a busy worker of our local cluster gets to stop on Ctrl-C
#: before its nanny kills it.
INTERRUPT_CLOSE_SECONDS = 0.5
#: How long closing our client or cluster may take before we give up on it.
CLOSE_TIMEOUT_SECONDS = 10.0
#: How long tearing down a cluster whose start was interrupted may take.
#: Its nannies get INTERRUPT_CLOSE_SECONDS to stop their workers, then kill
#: them; the rest is the scheduler closing.
ABANDON_TIMEOUT_SECONDS = 5.0
# Options of LocalCluster that the backend sets itself: its size and shape,
# and what keeps it private (127.0.0.1 only, TLS, no dashboard by default).
_RESERVED_CLUSTER_OPTIONS = frozenset(
    {
        "n_workers",
        "threads_per_worker",
        "processes",
        "host",
        "ip",
        "interface",
        "protocol",
        "security",
        "dashboard_address",
        "asynchronous",
        "loop",
    }
)
# The workers of our local cluster import this module as a Dask preload,
# which runs its dask_setup() as each worker starts.
_PRELOAD = __name__

# Start methods for the local cluster's workers; fork is left out on purpose
# (see _options.DEFAULT_START_METHOD).
_START_METHODS = tuple(
    m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
)

_START_METHOD_KEY = "distributed.worker.multiprocessing-method"

# Outcome tags in the bytes a worker sends back.
_OK = 0
_ERROR = 1
_INIT_FAILED = 2

_PROTOCOL = pickle.HIGHEST_PROTOCOL


class DaskClusterError(BrokenExecutor):
    """Dask could not run the task.

    The local cluster failed to start, the connection to the scheduler was
    lost, Dask itself cancelled the task (someone restarted the cluster), or
    a Ctrl-C leaving a ``with`` block stopped it.
    """


# -- pickling ---------------------------------------------------------------


class _Pickler(pickle.Pickler):
    """The standard pickler, minus tblib's reducers for exceptions.

    Importing ``distributed`` runs ``tblib.pickling_support.install()``,
    which registers a reducer for every exception class in ``copyreg``. It
    drops what a custom ``__init__`` sets (``SystemExit(5).code`` comes
    back as ``None``) and pickles traceback objects. Exceptions here travel
    the standard way, as they do on every other backend, with the worker's
    traceback as text (see :mod:`executors._remote`).
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException) and type(obj) in copyreg.dispatch_table:
            return obj.__reduce_ex__(_PROTOCOL)
        return NotImplemented


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, _PROTOCOL).dump(obj)
    return buffer.getvalue()


# -- the worker side --------------------------------------------------------

# Initializers that failed in this worker process, by plugin name. Workers
# that join after registration run the plugin too, and Dask only logs a
# failure there; the next task on such a worker reports it instead of
# running.
_failed_initializers: dict[str, str] = {}


class _InitializerPlugin(WorkerPlugin):
    """Runs the executor's initializer in every worker, new ones included.

    The initializer travels as bytes pickled in the caller, so neither the
    scheduler nor Dask's plugin machinery unpickles it.
    """

    def __init__(self, name: str, payload: bytes) -> None:
        self.name = name
        self.payload = payload

    def setup(self, worker: Any) -> None:
        try:
            initializer, initargs = pickle.loads(self.payload)
            initializer(*initargs)
        except BaseException as exc:
            _failed_initializers[self.name] = "".join(
                traceback.format_exception_only(type(exc), exc)
            ).strip()
            if isinstance(exc, Exception):
                raise
            # SystemExit and friends would stop the worker's event loop.
            raise RuntimeError(f"the initializer raised {exc!r}") from exc

    def teardown(self, worker: Any) -> None:
        _failed_initializers.pop(self.name, None)


def dask_setup(worker: Any) -> None:
    """Dask preload hook: a worker of our local cluster ignores Ctrl-C.

    Ctrl-C in a terminal sends SIGINT to the whole foreground process group,
    the workers included. A worker that got it would stop on its own, wait
    for its task, and be restarted by its nanny; the task would run again.
    The caller owns the workers' lives: it gets the ``KeyboardInterrupt``
    and stops them (at once when a ``with`` block or the program ends on
    it). Dask calls this on the worker's event loop, the main thread of the
    worker process, where signal handlers can be set.

    Args:
        worker: The starting :class:`distributed.Worker` (unused).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _dump_error(exc: BaseException) -> bytes:
    try:
        return _dumps((_ERROR, picklable_exception(exc)))
    except Exception:
        # The carrier already replaces exceptions that fail to pickle; this
        # catches one whose pickling misbehaves in some other way.
        name = type(exc).__qualname__
        fallback = RuntimeError(f"the task raised {name}, which cannot be sent back")
        return _dumps((_ERROR, fallback))


def _run_task(payload: bytes, initializer: str | None) -> bytes:
    """Run one task in a Dask worker; always return the outcome as bytes.

    The task never raises into Dask: Dask would pickle the exception its own
    way, and a failure of Dask's task machinery must stay distinguishable
    from the task's own error.
    """
    if initializer is not None and initializer in _failed_initializers:
        return _dumps((_INIT_FAILED, _failed_initializers[initializer]))
    try:
        fn, args, kwargs = pickle.loads(payload)
        result = fn(*args, **kwargs)
    except BaseException as exc:
        return _dump_error(exc)
    try:
        return _dumps((_OK, result))
    except BaseException as exc:
        # An unpicklable result: the caller gets the pickling error itself.
        return _dump_error(exc)


# -- the caller side --------------------------------------------------------


@dataclass(eq=False)
class _WorkItem:
    future: Future[Any]
    payload: bytes
    label: str


@dataclass(eq=False)
class _Shared:
    """State shared by the executor, its dispatcher and its manager thread.

    Neither holds the executor itself, so an executor dropped without
    ``shutdown()`` is collected and its manager told to finish.
    """

    pending: deque[_WorkItem] = field(default_factory=deque)
    events: queue.SimpleQueue[tuple[Any, ...]] = field(
        default_factory=queue.SimpleQueue
    )
    broken: Callable[[], BaseException] | None = None


@dataclass(eq=False)
class _Runtime:
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


class _ThreadCount:
    """A remote cluster's worker threads, re-read at most every so often.

    Each read is a round trip to the scheduler: never call it from the
    client's event loop thread.
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


def _crash_error(exc: KilledWorker) -> WorkerCrashedError:
    attempts = exc.allowed_failures + 1
    worker = getattr(exc.last_worker, "address", "an unknown worker")
    error = WorkerCrashedError(
        f"the Dask workers running this task died {attempts} time(s) "
        f"(the scheduler allows {exc.allowed_failures} retries); the last was "
        f"{worker}. Dask does not report a worker's exit code to clients "
        f"({describe_exitcode(None)}): the worker or nanny log says whether it "
        "exited, segfaulted or was killed (SIGKILL is also what the OOM killer "
        "and the nanny's memory limit send)."
    )
    error.__cause__ = exc
    return error


def _translate(exc: BaseException) -> BaseException:
    """Turn a failure of Dask's machinery into our exception family.

    The one boundary where Dask's errors are translated: a task's own
    exception never gets here (the worker sends it back as bytes).
    """
    if isinstance(exc, KilledWorker):
        return _crash_error(exc)
    error = DaskClusterError(f"the Dask cluster did not run the task: {exc!r}")
    error.__cause__ = exc
    return error


class _Dispatcher:
    """Hands queued tasks to Dask while worker threads are free.

    A task is handed over by ``submit`` itself when a thread is free (as a
    raw ``client.submit`` would be), else by the client's event loop the
    moment Dask reports a task finished: no thread switch on the way.
    Futures are resolved by the manager thread instead, so that user
    callbacks and result unpickling never block the loop (with a
    ``LocalCluster`` the scheduler runs on it too).
    """

    def __init__(
        self, shared: _Shared, runtime: _Runtime, capacity: Callable[[], int]
    ) -> None:
        self.shared = shared
        self.client = runtime.client
        self.loop = runtime.client.loop
        self.plugin = runtime.plugin
        self.capacity = capacity
        # Guards everything below; held briefly, never across an await.
        self.lock = threading.Lock()
        self.in_flight: dict[str, tuple[_WorkItem, Any]] = {}
        # Finished on a worker, result on its way: no longer holds a thread.
        self.fetching: set[str] = set()
        # Dask futures whose results we hold: dropping one sends a release
        # to the scheduler, and Dask's client sends at most one batch of
        # messages per 10 ms. Released together with the next hand-over
        # (or a little later), a release never holds back a submit.
        self.spent: list[Any] = []
        self.flush_scheduled = False
        self.closed = False
        self.starved = False
        self.watchers: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """From any thread: hand over what fits, soon, on the loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.add_callback(self.pump)

    def is_idle(self) -> bool:
        with self.lock:
            return not self.in_flight and not self.shared.pending

    def pump(self) -> None:
        """From any thread: hand queued tasks to Dask while threads are free."""
        pending = self.shared.pending
        handed: list[tuple[str, Any]] = []
        with self.lock:
            if self.closed:
                return
            room = self.capacity() - len(self.in_flight) + len(self.fetching)
            while room > 0:
                try:
                    item = pending.popleft()
                except IndexError:
                    break
                if not item.future.set_running_or_notify_cancel():
                    continue  # cancelled while queued: Dask never sees it
                try:
                    dask_future = self.client.submit(
                        _run_task,
                        item.payload,
                        self.plugin,
                        key=f"{item.label}-{uuid.uuid4().hex}",
                        pure=False,
                    )
                except BaseException as exc:
                    self.shared.events.put(("failed", item, exc))
                    break
                self.in_flight[dask_future.key] = (item, dask_future)
                handed.append((dask_future.key, dask_future))
                room -= 1
            if pending and not self.starved:
                # Tasks wait and no thread is free: the manager looks again
                # now and then, since workers that died come back.
                self.starved = True
                self.shared.events.put(_POLL)
            elif not pending:
                self.starved = False
            spent = self.spent if handed else []
            if handed:
                self.spent = []
        if handed:
            self._watch(handed)
        # Released after the submits above, in the same batch.
        del spent

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop.asyncio_loop
        except RuntimeError:
            return False

    def _watch(self, handed: list[tuple[str, Any]]) -> None:
        if not self._on_loop():
            self.loop.add_callback(self._watch, handed)
            return
        for key, dask_future in handed:
            watcher = asyncio.ensure_future(self._follow(key, dask_future))
            self.watchers.add(watcher)
            watcher.add_done_callback(self.watchers.discard)

    async def _follow(self, key: str, dask_future: Any) -> None:
        """On the loop: wait for one task, post its outcome to the manager."""
        data = exc = None
        try:
            # Dask's own wait() and as_completed() wait on this state; it
            # says "finished" a round trip before the result can be fetched,
            # and the thread it freed gets its next task right away.
            state = getattr(dask_future, "_state", None)
            if state is not None:
                await state.wait()
                with self.lock:
                    if key in self.in_flight:
                        self.fetching.add(key)
                self.pump()
            (data,) = await self.client.gather([dask_future], asynchronous=True)
        except BaseException as error:  # KilledWorker, a lost scheduler ...
            exc = error
        with self.lock:
            entry = self.in_flight.pop(key, None)
            self.fetching.discard(key)
            self.spent.append(dask_future)
            flush = not self.flush_scheduled
            self.flush_scheduled = True
        if entry is not None:
            self.shared.events.put(("done", entry[0], data, exc))
        if flush:
            self.loop.call_later(RELEASE_SECONDS, self._flush)
        self.pump()

    def _flush(self) -> None:
        with self.lock:
            spent, self.spent = self.spent, []
            self.flush_scheduled = False
        del spent

    def close(self) -> list[_WorkItem]:
        """From any thread: stop handing over; return what was not finished."""
        with self.lock:
            self.closed = True
            items = [item for item, _ in self.in_flight.values()]
            dask_futures = [future for _, future in self.in_flight.values()]
            self.in_flight.clear()
            self.fetching.clear()
            self.spent.clear()
        while True:
            try:
                items.append(self.shared.pending.popleft())
            except IndexError:
                break
        if dask_futures:
            with contextlib.suppress(Exception):
                self.client.cancel(dask_futures)
        return items


_STOP = ("stop",)
_POLL = ("poll",)


class _Manager(threading.Thread):
    """Resolves the stdlib futures, then closes the client and cluster."""

    def __init__(
        self,
        shared: _Shared,
        runtime: _Runtime,
        dispatcher: _Dispatcher | None,
        refresh: Callable[[], int] | None,
        stopping: bool,
    ) -> None:
        super().__init__(name="executors-dask", daemon=False)
        self.shared = shared
        self.runtime = runtime
        self.dispatcher = dispatcher
        self.refresh = refresh
        self.stopping = stopping

    def stop(self) -> None:
        self.shared.events.put(_STOP)

    def interrupt(self) -> None:
        """From the caller, on Ctrl-C: cancel what is queued, fail what runs."""
        self.runtime.interrupted = True
        if self.dispatcher is not None:
            items = self.dispatcher.close()
            queued = [item.future for item in items if item.future.cancel()]
            notify_cancelled(queued)
            if self.runtime.cluster is not None:
                fate = "its worker is being stopped"
            else:
                fate = "Dask cannot stop it, so it may still run on the cluster"
            message = (
                "the 'dask' executor was interrupted (KeyboardInterrupt) while "
                f"the task ran; {fate}"
            )
            fail_futures(
                [item.future for item in items], lambda: DaskClusterError(message)
            )
        self.stop()

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            error = exc
            self._break(lambda: _translate(error))
        finally:
            self.runtime.close()

    def _loop(self) -> None:
        events = self.shared.events
        dispatcher = self.dispatcher
        while True:
            # While tasks wait for room, look again now and then: workers that
            # died come back, and a remote cluster grows.
            polling = dispatcher is not None and bool(self.shared.pending)
            try:
                event = events.get(timeout=POLL_SECONDS if polling else None)
            except queue.Empty:
                event = ("refresh",)
            while True:
                self._handle(event)
                try:
                    event = events.get_nowait()
                except queue.Empty:
                    break
            if not (self.stopping or self.shared.broken is not None):
                continue
            if dispatcher is None or dispatcher.is_idle():
                # Nothing is in flight any more: what is queued now is all
                # there will be.
                with contextlib.suppress(queue.Empty):
                    while True:
                        self._handle(events.get_nowait())
                return

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "done":
            _, item, data, exc = event
            if exc is not None:
                error = _translate(exc)
                fail_futures([item.future], lambda: error)
            else:
                self._resolve(item, data)
        elif kind == "stop":
            self.stopping = True
        elif kind == "refresh" and self.dispatcher is not None:
            if self.refresh is not None:
                self.refresh()
            self.dispatcher.starved = False
            self.dispatcher.wake()
        elif kind == "failed":
            # Dask refused a task (its client is closed): nothing more runs.
            _, item, exc = event
            self._break(functools.partial(_translate, exc), item)

    def _resolve(self, item: _WorkItem, data: bytes) -> None:
        try:
            tag, value = pickle.loads(data)
        except BaseException as exc:
            # The result pickled in the worker but does not load here.
            error = exc
            fail_futures([item.future], lambda: error)
            return
        if tag == _OK:
            with contextlib.suppress(Exception):
                item.future.set_result(value)
        elif tag == _ERROR:
            fail_futures([item.future], lambda: value)
        else:
            message = (
                f"the initializer failed on a Dask worker: {value}; the executor "
                "is broken, as a worker without its initializer must not run tasks"
            )
            self._break(lambda: InitializerFailedError(message), item)

    def _break(
        self, make_error: Callable[[], BaseException], *items: _WorkItem
    ) -> None:
        """Mark the executor broken and fail every unfinished future."""
        if self.shared.broken is None:
            self.shared.broken = make_error
        failed = [item.future for item in items]
        if self.dispatcher is not None:
            failed += [item.future for item in self.dispatcher.close()]
        fail_futures(failed, make_error)


# Managers still running, told to finish when the interpreter exits (the
# stdlib pools do the same), so that their clusters are closed first.
_live_managers: weakref.WeakSet[_Manager] = weakref.WeakSet()


def _python_exit() -> None:
    managers = list(_live_managers)
    # A program ended by an unhandled Ctrl-C must not wait for the tasks it
    # was interrupted in (a map's chunk can run for many seconds, and Dask
    # would retry it on a restarted worker): stop them as leaving a `with`
    # block on Ctrl-C does. Otherwise, as the stdlib pools do, finish the
    # queued work first.
    interrupted = _ending_on_keyboard_interrupt()
    for manager in managers:
        if interrupted:
            manager.interrupt()
        else:
            manager.stop()
    try:
        for manager in managers:
            manager.join()
    except KeyboardInterrupt:
        # Ctrl-C while waiting for the work: stop it.
        for manager in managers:
            manager.interrupt()
        for manager in managers:
            manager.join()


def _ending_on_keyboard_interrupt() -> bool:
    """Whether the interpreter is exiting because of an unhandled Ctrl-C.

    Python prints an unhandled exception, storing it as ``sys.last_exc``
    (``sys.last_value`` before 3.12), before it runs the threading exit
    hooks. In an interactive session it holds the last error shown.
    """
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)


if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_python_exit)


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


def _connect(address: str, timeout: float | None, security: Security | None) -> Any:
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


def _label(fn: Callable[..., Any]) -> str:
    target = unwrap(fn)
    name = getattr(target, "__name__", None) or type(target).__name__
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "task"


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
    capabilities = Capabilities(
        cancels_queued=True,
        survives_worker_death=True,
        retries_lost_tasks=True,
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
        local = address is None and client is None
        if address is not None and client is not None:
            raise ValueError("the 'dask' backend takes address= or client=, not both")
        if address is not None and (not isinstance(address, str) or not address):
            raise TypeError(
                f"address must be a scheduler address (str), got {address!r}"
            )
        if client is not None:
            if not isinstance(client, distributed.Client):
                raise TypeError(
                    f"client must be a distributed.Client, got {type(client).__name__}"
                )
            if client.asynchronous:
                raise ValueError("the 'dask' backend needs a synchronous Client")
        if not local:
            for name, value in (
                ("max_workers", max_workers),
                ("allowed_failures", allowed_failures),
                ("dashboard_address", dashboard_address),
                ("mp_context", mp_context),
                ("cluster_options", cluster_options),
            ):
                if value is not None:
                    raise ValueError(
                        f"{name} configures the local cluster of the 'dask' "
                        "backend; with address= or client= the remote cluster's "
                        "own settings apply"
                    )
        workers = check_max_workers(max_workers, default=cpu_count())
        check_initializer(initializer, initargs)
        if allowed_failures is None:
            allowed_failures = DEFAULT_ALLOWED_FAILURES
        if not isinstance(allowed_failures, int) or isinstance(allowed_failures, bool):
            raise TypeError(
                f"allowed_failures must be an int, got {allowed_failures!r}"
            )
        if allowed_failures < 0:
            raise ValueError("allowed_failures must be >= 0")
        if max_in_flight is not None and (
            not isinstance(max_in_flight, int) or isinstance(max_in_flight, bool)
        ):
            raise TypeError(
                f"max_in_flight must be an int or None, got {max_in_flight!r}"
            )
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if security is not None and not isinstance(security, Security):
            raise TypeError(
                "security must be a distributed.security.Security or None, "
                f"got {type(security).__name__}"
            )
        if security is not None and client is not None:
            raise ValueError(
                "security= does not apply with client=: the client already has "
                "its own security settings"
            )
        if local and security is None and not _tls_available():
            raise ImportError(_NO_TLS_MESSAGE)
        if dashboard_address is not None and not isinstance(dashboard_address, str):
            raise TypeError(
                f"dashboard_address must be a str or None, got {dashboard_address!r}"
            )
        if dashboard_address is not None and not _looks_like_host_port(
            dashboard_address
        ):
            # Checked now: a bad address would otherwise surface only when the
            # cluster starts, as a broken executor rather than a bad option.
            raise ValueError(
                "dashboard_address must be ':PORT' or 'HOST:PORT', such as "
                f"'127.0.0.1:8787', got {dashboard_address!r}"
            )
        if dashboard_address is not None and dashboard_address.startswith(":"):
            # Dask binds a bare port on every interface; serving the
            # dashboard beyond this machine must be asked for by a host.
            dashboard_address = "127.0.0.1" + dashboard_address
        if isinstance(mp_context, multiprocessing.context.BaseContext):
            mp_context = mp_context.get_start_method()
        if mp_context is not None and not isinstance(mp_context, str):
            raise TypeError(
                "mp_context must be None, a start method name or a multiprocessing "
                f"context, got {mp_context!r}"
            )
        if mp_context is not None and mp_context not in _START_METHODS:
            raise ValueError(
                f"mp_context {mp_context!r} is not supported by the 'dask' backend; "
                f"choose one of {', '.join(map(repr, _START_METHODS))} (fork is "
                "unsafe: the cluster's event loop runs in a thread of this process)"
            )
        if cluster_options is not None and not isinstance(cluster_options, Mapping):
            kind = type(cluster_options).__name__
            raise TypeError(f"cluster_options must be a mapping, got {kind}")
        options = dict(cluster_options or {})
        reserved = sorted(_RESERVED_CLUSTER_OPTIONS & set(options))
        if reserved:
            raise ValueError(
                f"cluster_options may not set {', '.join(reserved)}: the 'dask' "
                "backend sets them (use max_workers and dashboard_address)"
            )
        timeout = check_timeout(connect_timeout, "connect_timeout")
        super().__init__(max_workers=workers, cloudpickle=cloudpickle)

        self._local = local
        self._allowed_failures = allowed_failures
        self._max_in_flight = max_in_flight
        self._dashboard_address = dashboard_address
        self._start_method = mp_context
        self._cluster_options = options
        self._security = security
        # Pickled now, in the caller: a bad initializer fails create(), and
        # only workers ever unpickle it.
        self._initializer_payload = (
            None
            if initializer is None
            else _dumps((self._prepare(initializer), initargs))
        )
        self._shared = _Shared()
        self._start_lock = threading.Lock()
        self._manager: _Manager | None = None
        self._dispatcher: _Dispatcher | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._client: Any = client
        self._owns_client = False
        if address is not None:
            self._client = _connect(address, timeout, security)
            self._owns_client = True
        self._threads = None if local else _ThreadCount(self._client)
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
        broken = self._shared.broken
        return None if broken is None else broken()

    def _start(self) -> None:
        # The base calls this outside its lock and before map's deadline:
        # the cluster takes a second or two to start.
        self._ensure_started()

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        return self._enqueue(fn, args, kwargs, _label(fn))

    def _submit_chunk(
        self, fn: Callable[..., Any], chunk: _map.Chunk
    ) -> Future[_map.ChunkResult]:
        return self._enqueue(_map.run_chunk, (fn, chunk), {}, f"map_{_label(fn)}")

    def close_at_exit(self) -> None:
        """At interpreter exit: finish the submitted work, unless Ctrl-C ended it.

        A program ended by an unhandled ``KeyboardInterrupt``, or interrupted
        again while this waits, stops its tasks as a ``with`` block leaving
        on Ctrl-C does: the map it was interrupted in may have chunks that
        run for many seconds, which Dask would run again on restarted
        workers.
        """
        if not _ending_on_keyboard_interrupt():
            try:
                self.shutdown(wait=True)
                return
            except KeyboardInterrupt:
                pass
        self._interrupt()
        self.shutdown(wait=True, cancel_futures=True)

    def _interrupt(self) -> None:
        # Ctrl-C leaving a `with` block: drop the queue, fail what runs and,
        # on a cluster we started, stop the workers now rather than wait for
        # tasks that may run for minutes.
        with self._lock:
            manager = self._manager
        if manager is not None:
            manager.interrupt()

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            if cancel_futures:
                cancelled = []
                pending = self._shared.pending
                while True:
                    try:
                        item = pending.popleft()
                    except IndexError:
                        break
                    item.future.cancel()
                    cancelled.append(item.future)
                # Taken off the queue: the dispatcher never dequeues them, so
                # wait() and as_completed() must hear of it from us.
                notify_cancelled(cancelled)
            manager = self._manager
            if manager is None and self._owns_client and self._client is not None:
                # Connected at construction, never used: close it the same way.
                runtime = _Runtime(self._client, close_client=True)
                self._client = None
                manager = self._start_manager(runtime, None, stopping=True)
            if manager is not None:
                manager.stop()
        if not wait:
            return
        # A first submit may be starting the cluster right now; it sees the
        # shutdown flag when done and closes the cluster itself.
        with self._start_lock:
            manager = self._manager
        if manager is not None and manager is not threading.current_thread():
            manager.join()

    # -- plumbing ----------------------------------------------------------

    def _enqueue(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        label: str,
    ) -> Future[Any]:
        future: Future[Any] = OurFuture()
        try:
            payload = _dumps((fn, args, kwargs))
        except Exception as exc:
            # The other process backends fail the future with the pickling
            # error; so do we, before Dask ever sees the task.
            future.set_exception(exc)
            return future
        self._shared.pending.append(_WorkItem(future, payload, label))
        dispatcher = self._dispatcher
        if dispatcher is not None:
            dispatcher.pump()
        broken = self._shared.broken
        if broken is not None:
            # Broken between our check and the append: the manager may have
            # drained the queue already.
            fail_futures([future], broken)
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
                        dispatcher = _Dispatcher(
                            self._shared, runtime, self._capacity_reader(runtime)
                        )
                        self._dispatcher = dispatcher
                        self._start_manager(runtime, dispatcher, stopping=False)
            except BaseException:
                # Ctrl-C before the manager thread, which closes the runtime,
                # could start: close it here, so the next submit starts the
                # only cluster.
                manager = self._manager
                if manager is None or manager.ident is None:
                    self._manager = self._dispatcher = None
                    runtime.interrupted = True
                    runtime.close()
                raise
            if refused:
                runtime.close()
                raise RuntimeError("cannot schedule new futures after shutdown")

    def _start_manager(
        self, runtime: _Runtime, dispatcher: _Dispatcher | None, *, stopping: bool
    ) -> _Manager:
        manager = _Manager(self._shared, runtime, dispatcher, self._threads, stopping)
        self._manager = manager
        _live_managers.add(manager)
        # Dropped without shutdown(): let the manager finish and close.
        self._finalizer = weakref.finalize(self, self._shared.events.put, _STOP)
        manager.start()
        return manager

    def _connect(self) -> _Runtime:
        if self._local:
            runtime = self._start_local_cluster()
        else:
            runtime = _Runtime(self._client, close_client=self._owns_client)
            self._client = None
        if self._initializer_payload is not None:
            name = f"executors-initializer-{uuid.uuid4().hex}"
            runtime.plugin = name
            try:
                runtime.client.register_plugin(
                    _InitializerPlugin(name, self._initializer_payload), name=name
                )
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    # Ctrl-C while the plugin registers is not the
                    # initializer failing: close quickly, stay usable.
                    runtime.interrupted = True
                    runtime.close()
                    raise
                runtime.close()
                message = f"the initializer failed on a Dask worker: {exc!r}"
                cause = exc

                def make_error() -> BaseException:
                    error = InitializerFailedError(message)
                    error.__cause__ = cause
                    return error

                self._shared.broken = make_error
                raise make_error() from exc
        return runtime

    def _start_local_cluster(self) -> _Runtime:
        scheduler_options: dict[str, Any] = {"allowed_failures": self._allowed_failures}
        if self._dashboard_address is None:
            # The scheduler serves health routes even without a dashboard,
            # by default on port 8787 of every interface; keep it private.
            scheduler_options.update(dashboard=False, dashboard_address="127.0.0.1:0")
        options = dict(self._cluster_options)
        scheduler_options.update(options.pop("scheduler_kwargs", None) or {})
        # Passing preload replaces Dask's configured list: keep it after ours.
        preload = options.pop("preload", None)
        if preload is None:
            preload = dask.config.get("distributed.worker.preload")
        if isinstance(preload, str):
            preload = [preload]
        if self._start_method is not None:
            dask.config.set({_START_METHOD_KEY: self._start_method})
        # Mutual TLS: scheduler, nannies and workers accept only peers that
        # hold this key, which only this process and its workers ever see.
        security = self._security
        if security is None:
            security = Security.temporary()  # type: ignore[no-untyped-call]
        cluster: Any = None
        client: Any = None
        try:
            cluster = distributed.LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=self._max_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                security=security,
                dashboard_address=self._dashboard_address,
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
        return _Runtime(client, cluster, close_client=True)

    def _capacity_reader(self, runtime: _Runtime) -> Callable[[], int]:
        if self._max_in_flight is not None:
            limit = self._max_in_flight
            return lambda: limit
        if runtime.cluster is not None:
            scheduler = runtime.cluster.scheduler
            # The scheduler runs in this process, on the loop the dispatcher
            # runs on: its count is live and free to read.
            return lambda: int(scheduler.total_nthreads)
        threads = self._threads
        if threads is None:
            return lambda: self._max_workers
        # The loop must not wait on the scheduler: read the last count, which
        # the manager thread refreshes while tasks wait.
        threads()
        return lambda: threads.value


def _tls_available() -> bool:
    try:
        return importlib.util.find_spec("cryptography") is not None
    except (ImportError, ValueError):  # ValueError: a stubbed-out module
        return False


_NO_TLS_MESSAGE = (
    "the 'dask' backend secures its local cluster with TLS and a throw-away "
    "certificate, which needs the 'cryptography' package: "
    'pip install "executors[dask]" (or pip install cryptography). Without it, '
    "pass security=distributed.security.Security() to run the cluster without "
    "TLS, where any user of this machine who finds its ports can run code in "
    "this process and its workers."
)


def _looks_like_host_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep) and port.isdigit() and int(port) < 65536 and " " not in host
