"""Backend ``mp_pool``: :class:`multiprocessing.pool.Pool`, made hang-free.

Raw ``Pool`` breaks the contract in four places, and this module closes each:

* A worker that dies mid-task (``os._exit``, a signal, a segfault, the OOM
  killer) is silently replaced and its task's result never arrives: the
  caller waits forever (CPython gh-66587, bpo-22393, still open). Here a
  watchdog sees every worker's exit and breaks the executor.
* A failing ``initializer`` makes raw Pool restart workers forever. Here it
  raises :class:`~executors.InitializerFailedError`.
* ``apply_async`` has no ``cancel()``. Here work waits in our own queue and
  only a small window is handed to the Pool, so queued futures cancel.
* A result that cannot be pickled arrives as ``MaybeEncodingError`` (its
  type lost); one that cannot be unpickled kills Pool's result thread (every
  later result is lost). Here both fail only their own future, with the
  original error.

How a task flows::

    submit(fn, *args)
      │ pickle (fn, args, kwargs) now: an unpicklable argument fails its
      │ future here and the pool never sees it (a chunk of a map is
      │ pickled later, by Pool's task handler: see _Pickled)
      v
    _Feeder.queue ── cancellable, unbounded ──┐
      │ at most DISPATCH_PER_WORKER * workers dispatched and unfinished
      │ (CHUNK_DISPATCH_PER_WORKER for chunks of a map)
      v                                       │ refilled by each completion
    Pool.apply_async(_run_task, payload)      │
      │ Pool's task handler thread            │
      v                                       │
    inqueue pipe ─> worker: unpickle, run, pickle the result (or the error)
                         │                    │
    outqueue pipe <──────┘                    │
      │ Pool's result handler thread          │
      v                                       │
    _Feeder._settle: unpickle, dispatch next ─┘, set the stdlib Future

    _Watchdog thread: waits on every worker's sentinel and on the status
    pipe, where each worker reports "ready", "initializer failed" and
    "exiting cleanly". A worker that exits any other way breaks the pool:
    every unfinished future fails with WorkerCrashedError and the Pool is
    dismantled without relying on its own terminate(), which can block on a
    lock a killed worker held. On shutdown the watchdog closes the pool once
    the submitted work has drained.

The watchdog reads ``Pool._pool`` and stops Pool's handler threads through
their private ``_state``: Pool offers no public way to learn that a worker
died, and ``Pool.terminate()`` itself can hang after one did. The Pool
subclass also quiets two wake-ups of Pool's worker handler that cost the
other threads GIL time (``_get_sentinels`` and the cache's notifier; see
``_WatchedPool``). These internals are
unchanged from Python 3.8 to 3.13.
"""

from __future__ import annotations

import contextlib
import copyreg
import functools
import io
import logging
import multiprocessing
import multiprocessing.pool
import multiprocessing.util
import os
import pickle
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future, InvalidStateError
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any, TypeVar

from .._base import BaseExecutor, fail_futures, notify_cancelled
from .._capabilities import Capabilities
from .._errors import InitializerFailedError, WorkerCrashedError, describe_exitcode
from .._map import Chunk, ChunkResult, run_chunk
from .._options import check_process_pool_options, cpu_count
from .._remote import RemoteTraceback, picklable_exception

__all__ = ["MpPoolExecutor"]

T = TypeVar("T")

_log = logging.getLogger(__name__)

# Tasks handed to the Pool and not yet finished, per worker. Two keeps each
# worker's next task waiting in the pipe while it runs one, so workers never
# idle between tasks; more would leave fewer futures cancellable.
DISPATCH_PER_WORKER = 2
# The same for chunks of a map: as many as a lazy map keeps in flight per
# worker (CHUNKS_IN_FLIGHT_PER_WORKER), so an eager map of tiny tasks is
# handed over whole, as Pool.map does, instead of waiting a result round
# trip for each of its last chunks.
CHUNK_DISPATCH_PER_WORKER = 4
# How often the watchdog checks that Pool's own threads are alive when
# nothing else wakes it. A dead handler thread would otherwise hang every
# future silently; checking costs one wake-up per second.
HEALTH_CHECK_SECONDS = 1.0
# Poll interval while a worker is being started or its exit is being reaped.
POLL_SECONDS = 0.005
# Pool's worker handler reaps a dead worker within milliseconds; the watchdog
# waits this long for it (reading the exit code concurrently with it can make
# forkserver report 255) before reading the code itself.
REAP_GRACE_SECONDS = 1.0
# A graceful close (workers finish and exit) may take this long before the
# remaining workers are killed.
CLOSE_SECONDS = 5.0
# Bound on dismantling a pool with killed workers: joins, drains, unsticking.
DISMANTLE_SECONDS = 5.0
# Exit code of a worker whose initializer raised (after reporting it).
_INIT_FAILED_EXITCODE = 77
# Status messages are written with one write() of at most PIPE_BUF bytes,
# which POSIX makes atomic: many workers share the pipe without a lock.
_STATUS_MAX_BYTES = 4000


# -- worker side --------------------------------------------------------------


class _Pickler(pickle.Pickler):
    """ForkingPickler's reducers (connections, sockets), as Pool pickles.

    ForkingPickler copies its reducer table on every instantiation, which
    costs more than pickling a small task; this class shares one table,
    rebuilt when a reducer is registered.
    """

    dispatch_table: dict[Any, Any] = {}
    table_sizes = (-1, -1)


def _dumps(obj: object) -> bytes:
    extra = ForkingPickler._extra_reducers  # type: ignore[attr-defined]
    sizes = (len(copyreg.dispatch_table), len(extra))
    if sizes != _Pickler.table_sizes:
        _Pickler.dispatch_table = {**copyreg.dispatch_table, **extra}
        _Pickler.table_sizes = sizes
    buffer = io.BytesIO()
    _Pickler(buffer, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _dump_error(exc: BaseException) -> bytes:
    try:
        return _dumps(picklable_exception(exc))
    except Exception as why:  # pragma: no cover - picklable_exception checks
        return _dumps(RuntimeError(f"{type(exc).__qualname__}: {exc!s} ({why!r})"))


def _run_task(payload: bytes) -> tuple[bool, bytes]:
    """Run one task in a worker; return ``(ok, pickled value or error)``.

    The argument and the result are pickled by us, not by Pool: an argument
    that raises while unpickled becomes this task's error instead of killing
    the worker, a result that cannot be pickled fails with the pickler's own
    error (Pool would send ``MaybeEncodingError``), and the parent unpickles
    the result in our callback, where a failure cannot kill Pool's result
    thread. Every exception is caught, ``SystemExit`` included: a task that
    raises it fails; the worker lives on.
    """
    try:
        fn, args, kwargs = pickle.loads(payload)
        value = fn(*args, **kwargs)
    except BaseException as exc:
        return False, _dump_error(exc)
    try:
        return True, _dumps(value)
    except BaseException as exc:
        return False, _dump_error(exc)


def _report(status: Connection, kind: bytes, name: str, detail: bytes = b"") -> None:
    message = (kind + b" " + name.encode() + b"\0" + detail)[:_STATUS_MAX_BYTES]
    # The parent may be gone; the worker then ends anyway.
    with contextlib.suppress(OSError):
        status.send_bytes(message)


def _worker_init(
    status: Connection,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> None:
    """Pool's initializer in every worker: run the user's, then report."""
    name = multiprocessing.current_process().name
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            summary = f"{type(exc).__qualname__}: {exc}"[:500]
            text = "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__)
            )
            budget = _STATUS_MAX_BYTES - 600
            detail = summary.encode() + b"\0" + text[-budget:].encode()
            _report(status, b"F", name, detail)
            # No traceback on the worker's stderr: the parent raises it.
            raise SystemExit(_INIT_FAILED_EXITCODE) from None
    # Runs when the worker process ends through Python (Pool's loop ended
    # between tasks), not when it is killed or calls os._exit: the parent
    # tells a clean exit (max_tasks_per_child) from a crash by it.
    multiprocessing.util.Finalize(
        None, _report, args=(status, b"X", name), exitpriority=0
    )
    _report(status, b"R", name)


# -- parent side --------------------------------------------------------------


class _Pickled:
    """A task's ``(fn, args, kwargs)``, pickled only when Pool sends it.

    Pool pickles what it sends in its task handler thread; this object's
    pickle is the bytes of the call, so the worker receives plain bytes and
    unpickles them in ``_run_task`` as usual. Chunks of a map travel this
    way: the first chunk reaches a worker while the caller is still
    submitting the others, instead of after all of them have been pickled
    in the caller's thread. A chunk that cannot be pickled fails its own
    future through Pool's error callback.
    """

    __slots__ = ("call",)

    def __init__(self, call: tuple[Any, tuple[Any, ...], dict[str, Any]]) -> None:
        self.call = call

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        return bytes, (_dumps(self.call),)


@dataclass(eq=False)
class _WorkItem:
    future: Future[Any]
    # The pickled call (bytes), or the call to pickle when Pool sends it.
    payload: bytes | _Pickled | None
    chunk: bool = False


class _NotifyOnceClosed:
    """Pool's "the cache is empty" notice, passed on only once Pool is closing.

    Pool's task cache wakes the worker handler each time it empties: after
    every task of a ``submit(...).result()`` loop. The handler then polls
    every worker's exit and competes for the GIL with the very threads that
    carry the result, about a third of a round trip here. It needs the
    notice only to stop once a closed pool has drained; ``close()`` and
    ``terminate()`` wake it themselves after changing the state.
    """

    def __init__(self, pool: _WatchedPool, notifier: Any) -> None:
        self._pool = pool
        self._notifier = notifier

    def put(self, obj: object) -> None:
        if self._pool._state != multiprocessing.pool.RUN:
            self._notifier.put(obj)


class _WatchedPool(multiprocessing.pool.Pool):
    """A Pool that reports every worker process it creates, replacements too."""

    # Private attributes of Pool this module reads (see the module docstring).
    _pool: list[BaseProcess]
    _state: str
    _worker_handler: threading.Thread
    _task_handler: threading.Thread
    _result_handler: threading.Thread
    _taskqueue: Any
    _inqueue: Any
    _outqueue: Any
    _change_notifier: Any
    _cache: Any  # a dict with a `notifier`
    _terminate: multiprocessing.util.Finalize

    def __init__(self, on_new_worker: Callable[[BaseProcess], None], **kwargs: Any):
        self._on_new_worker = on_new_worker
        super().__init__(**kwargs)
        self._cache.notifier = _NotifyOnceClosed(self, self._change_notifier)

    # Pool creates every worker (the first ones and each replacement, in its
    # worker handler thread) through this hook, which ThreadPool overrides too.
    def Process(self, ctx: Any, *args: Any, **kwds: Any) -> Any:  # type: ignore[override]
        process = ctx.Process(*args, **kwds)
        self._on_new_worker(process)
        return process

    # Pool's worker handler also wakes whenever a result waits in the
    # outqueue, and loops (polling every worker's exit) until the result
    # handler has read it: under a stream of results it spins, and its GIL
    # time starves the threads that move tasks and results (a map of tiny
    # tasks used twice the CPU in the parent). Worker exits wake it through
    # their sentinels and close/terminate through the change notifier, so
    # this drops only the spin, as ThreadPool does.
    def _get_sentinels(self) -> list[Any]:
        return [self._change_notifier._reader]

    @property
    def handler_threads(self) -> tuple[threading.Thread, ...]:
        return (self._worker_handler, self._task_handler, self._result_handler)


class _Feeder:
    """Our queue in front of the Pool: a bounded window, cancellable beyond it.

    Args:
        pool: The Pool to feed.
        window: Most tasks handed to the Pool and not yet settled.
        chunk_window: The same, when the next task is a chunk of a map.
        on_drained: Called when the feeder is closing and nothing is left.
    """

    def __init__(
        self,
        pool: _WatchedPool,
        window: int,
        chunk_window: int,
        on_drained: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._window = window
        self._chunk_window = chunk_window
        self._on_drained = on_drained
        self._lock = threading.Lock()
        self._queue: deque[_WorkItem] = deque()
        self._dispatched: set[_WorkItem] = set()
        # Futures submitted and not yet settled (queued or dispatched).
        self._unsettled = 0
        self._closing = False
        self._broken: Callable[[], BaseException] | None = None

    # -- called by the executor ----------------------------------------

    def submit(self, item: _WorkItem) -> None:
        with self._lock:
            broken = self._broken
            if broken is None:
                self._unsettled += 1
                self._queue.append(item)
                failed = self._dispatch_locked()
        if broken is not None:
            # The pool broke between the executor's check and now.
            fail_futures([item.future], broken)
            return
        self._fail_undispatched(failed)

    def close(self, cancel_futures: bool) -> None:
        """Let the work drain, cancelling what is queued if asked."""
        with self._lock:
            self._closing = True
            cancelled = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
                self._unsettled -= len(cancelled)
        for item in cancelled:
            item.future.cancel()
        # Nothing dequeues these any more; wake wait() and as_completed().
        notify_cancelled(item.future for item in cancelled)

    def broken_error(self) -> BaseException | None:
        broken = self._broken
        return None if broken is None else broken()

    @property
    def is_broken(self) -> bool:
        return self._broken is not None

    def drained(self) -> bool:
        with self._lock:
            return self._closing and self._unsettled == 0

    def break_(self, make_error: Callable[[], BaseException]) -> None:
        """Fail every unsettled future, dispatched or queued; refuse new work."""
        with self._lock:
            if self._broken is not None:
                return
            self._broken = make_error
            items = [*self._dispatched, *self._queue]
            self._dispatched.clear()
            self._queue.clear()
            self._unsettled = 0
        fail_futures((item.future for item in items), make_error)
        # Queued futures cancelled by their owner are never dequeued now.
        notify_cancelled(item.future for item in items)

    # -- dispatching ----------------------------------------------------

    def _dispatch_locked(self) -> list[tuple[_WorkItem, BaseException]]:
        failed: list[tuple[_WorkItem, BaseException]] = []
        while self._queue:
            window = self._chunk_window if self._queue[0].chunk else self._window
            if len(self._dispatched) >= window:
                break
            item = self._queue.popleft()
            if not item.future.set_running_or_notify_cancel():
                self._unsettled -= 1  # cancelled while queued
                continue
            try:
                self._pool.apply_async(
                    _run_task,
                    (item.payload,),
                    callback=functools.partial(self._on_result, item),
                    error_callback=functools.partial(self._on_error, item),
                )
            except Exception as exc:  # the Pool is not running: never expected
                self._unsettled -= 1
                failed.append((item, exc))
                continue
            item.payload = None  # the Pool holds it now
            self._dispatched.add(item)
        return failed

    def _fail_undispatched(self, failed: list[tuple[_WorkItem, BaseException]]) -> None:
        for item, exc in failed:
            with contextlib.suppress(InvalidStateError):
                item.future.set_exception(exc)

    # -- callbacks, in Pool's result handler (or task handler) thread ----

    def _on_result(self, item: _WorkItem, value: tuple[bool, bytes]) -> None:
        try:
            ok, data = value
            outcome = pickle.loads(data)
        except BaseException as exc:  # the result cannot be unpickled here
            ok, outcome = False, exc
        self._settle(item, ok, outcome)

    def _on_error(self, item: _WorkItem, exc: BaseException) -> None:
        # Pool itself failed the task (its task handler could not send it).
        self._settle(item, False, exc)

    def _settle(self, item: _WorkItem, ok: bool, outcome: Any) -> None:
        # An exception escaping into Pool's handler thread would kill it and
        # lose every later result, so nothing may escape.
        try:
            with self._lock:
                mine = item in self._dispatched  # not after a break
                if mine:
                    self._dispatched.discard(item)
                    failed = self._dispatch_locked()
            if not mine:
                return
            self._fail_undispatched(failed)
            # Outside the lock: done-callbacks may submit to this executor.
            with contextlib.suppress(InvalidStateError):
                if ok:
                    item.future.set_result(outcome)
                else:
                    item.future.set_exception(outcome)
            with self._lock:
                self._unsettled -= 1
                drained = self._closing and self._unsettled == 0
            if drained:
                self._on_drained()
        except BaseException:
            _log.exception("mp_pool: failed to settle a future")


class _StatusPipe:
    """The pipe on which workers report to the watchdog; the parent wakes it too.

    Every message is one ``write()`` of at most ``PIPE_BUF`` bytes, which
    POSIX makes atomic, so any number of writers share it without a lock.
    """

    def __init__(self, context: BaseContext) -> None:
        self.reader, self.writer = context.Pipe(duplex=False)
        self._lock = threading.Lock()
        self._open = True

    def wake(self) -> None:
        """Wake the watchdog (an empty message); safe from any thread."""
        with self._lock:
            if self._open:
                with contextlib.suppress(OSError):
                    self.writer.send_bytes(b"")

    def close(self) -> None:
        # Under the lock: a late wake() must never write to a closed (and
        # possibly reused) descriptor.
        with self._lock:
            self._open = False
            self.writer.close()
        self.reader.close()


class _WorkerRegistry:
    """Every worker process Pool creates, handed over by Pool's own threads."""

    def __init__(self, on_new: Callable[[], None]) -> None:
        self._on_new = on_new
        self._lock = threading.Lock()
        self._new: list[BaseProcess] = []
        self._all: list[BaseProcess] = []  # created and not yet released

    def adopt(self, process: BaseProcess) -> None:
        """Record a worker Pool is about to start (called by Pool's threads)."""
        with self._lock:
            self._new.append(process)
            self._all.append(process)
        self._on_new()

    def take_new(self) -> list[BaseProcess]:
        with self._lock:
            new, self._new = self._new, []
        return new

    def all(self) -> list[BaseProcess]:
        with self._lock:
            return list(self._all)

    def forget(self, process: BaseProcess) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._all.remove(process)


class _Watchdog:
    """Watches the workers of one Pool, and closes or dismantles the Pool.

    Its thread runs until the pool is closed (shutdown and the work drained)
    or broken (a worker died, the initializer failed, an interrupt), then
    dismantles the Pool and releases every file descriptor it used.

    Args:
        pool: The Pool.
        feeder: Its feeder, to break and to ask whether the work drained.
        workers: Where Pool's new worker processes are recorded.
        status: The status pipe.
        has_initializer: A user initializer runs in each worker.
    """

    def __init__(
        self,
        pool: _WatchedPool,
        feeder: _Feeder,
        workers: _WorkerRegistry,
        status: _StatusPipe,
        has_initializer: bool,
    ) -> None:
        self._pool = pool
        self._feeder = feeder
        self._workers = workers
        self._status = status
        self._has_initializer = has_initializer
        self._starting: list[BaseProcess] = []
        self._watched: dict[int, BaseProcess] = {}  # sentinel -> process
        self._dying: dict[BaseProcess, float] = {}  # exited, awaiting Pool's reap
        self._ready: set[str] = set()
        self._retired: set[str] = set()
        self._init_errors: dict[str, tuple[str, str]] = {}
        # A forked child (the fork start method, os.fork) inherits this
        # object, maybe with a lock held; only the creating process may act.
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=self._run, name="executors-mp_pool-watchdog", daemon=True
        )
        self._thread.start()
        _live_watchdogs.add(self)

    # -- called from other threads ----------------------------------------

    def close(self, cancel_futures: bool) -> None:
        """Let the pool close once the work drains (cancelling what is queued)."""
        if os.getpid() != self._pid:
            return
        self._feeder.close(cancel_futures)
        self._status.wake()

    def join(self) -> None:
        """Wait until the pool is closed or dismantled.

        Returns at once when called from a thread the pool itself needs (a
        done-callback runs in Pool's result handler or in this watchdog):
        waiting there would wait for itself.
        """
        current = threading.current_thread()
        if current is self._thread or current in self._pool.handler_threads:
            return
        if os.getpid() == self._pid:
            self._thread.join()

    # -- the watchdog thread ----------------------------------------------

    def _run(self) -> None:
        try:
            self._watch()
        except BaseException as exc:
            # A bug here must not leave futures waiting forever.
            self._feeder.break_(
                functools.partial(
                    BrokenExecutor,
                    f"the 'mp_pool' executor's watchdog failed: {exc!r}",
                )
            )
            _log.exception("mp_pool: the watchdog failed")
        finally:
            try:
                self._dismantle(graceful=not self._feeder.is_broken)
            finally:
                self._release()
                _live_watchdogs.discard(self)

    def _watch(self) -> None:
        feeder = self._feeder
        reader = self._status.reader
        while True:
            self._take_new()
            if feeder.is_broken or feeder.drained():
                return
            busy = self._starting or self._dying
            timeout = POLL_SECONDS if busy else HEALTH_CHECK_SECONDS
            for ready in wait([reader, *self._watched], timeout):
                if isinstance(ready, int):
                    self._dying[self._watched.pop(ready)] = time.monotonic()
            self._read_status()
            self._check_exits()
            if not feeder.is_broken:
                self._check_threads()

    def _take_new(self) -> None:
        starting = self._starting + self._workers.take_new()
        self._starting = []
        for process in starting:
            try:
                sentinel = process.sentinel
            except ValueError:  # not started yet
                self._starting.append(process)
                continue
            self._watched[sentinel] = process

    def _read_status(self) -> None:
        reader = self._status.reader
        while True:
            try:
                if not reader.poll():
                    return
                message = reader.recv_bytes()
            except (EOFError, OSError):
                return
            kind, _, rest = message.partition(b" ")
            name, _, detail = rest.partition(b"\0")
            who = name.decode(errors="replace")
            if kind == b"R":
                self._ready.add(who)
            elif kind == b"X":
                self._retired.add(who)
            elif kind == b"F":
                summary, _, text = detail.partition(b"\0")
                self._init_errors[who] = (
                    summary.decode(errors="replace"),
                    text.decode(errors="replace"),
                )
            # An empty message is a wake-up.

    def _check_exits(self) -> None:
        pool = self._pool
        now = time.monotonic()
        for process, since in list(self._dying.items()):
            # Pool's worker handler reaps the exit itself; reading the exit
            # code at the same time races with it (forkserver then reports
            # 255 to one reader), so wait for its reap.
            reaped = process not in pool._pool
            handler_gone = not pool._worker_handler.is_alive()
            if not (reaped or handler_gone or now - since > REAP_GRACE_SECONDS):
                continue
            del self._dying[process]
            self._on_exit(process)

    def _on_exit(self, process: BaseProcess) -> None:
        code = process.exitcode
        name = process.name
        pid = process.pid
        if name in self._init_errors:
            summary, text = self._init_errors[name]
            self._feeder.break_(
                functools.partial(_initializer_raised, summary, text, pid)
            )
        elif self._has_initializer and name not in self._ready:
            self._feeder.break_(functools.partial(_initializer_killed, code, pid))
        elif code == 0 and name in self._retired:
            # A clean exit between tasks (max_tasks_per_child): Pool has
            # started its replacement; no task was lost.
            self._forget(process)
        else:
            self._feeder.break_(functools.partial(_worker_crashed, code, pid))

    def _forget(self, process: BaseProcess) -> None:
        self._ready.discard(process.name)
        self._retired.discard(process.name)
        self._workers.forget(process)
        # Once Pool has reaped and dropped it, release its sentinel now rather
        # than at garbage collection (max_tasks_per_child=1 makes thousands).
        if process not in self._pool._pool:
            with contextlib.suppress(ValueError):
                process.close()

    def _check_threads(self) -> None:
        roles = ("worker handler", "task handler", "result handler")
        for role, thread in zip(roles, self._pool.handler_threads, strict=True):
            if not thread.is_alive():
                message = (
                    f"the {role} thread of the 'mp_pool' executor's "
                    "multiprocessing.Pool died; the executor is broken"
                )
                self._feeder.break_(functools.partial(BrokenExecutor, message))
                return

    # -- closing and dismantling ------------------------------------------

    def _dismantle(self, graceful: bool) -> None:
        pool = self._pool
        if graceful:
            # All submitted work has settled: let Pool close the normal way.
            deadline = time.monotonic() + CLOSE_SECONDS
            pool.close()
            for thread in pool.handler_threads:
                thread.join(_remaining(deadline))
            for process in self._workers.all():
                _join(process, _remaining(deadline))
            if not any(t.is_alive() for t in pool.handler_threads) and not any(
                _is_alive(p) for p in self._workers.all()
            ):
                return
            # Workers still starting on a loaded machine, or one wedged.
            _log.debug("mp_pool: the pool did not close in time; killing it")
        self._kill()

    def _kill(self) -> None:
        """Stop a Pool whose workers may be dead or wedged, without blocking.

        ``Pool.terminate()`` can block forever here: on the inqueue lock an
        idle worker held when it was killed, on the outqueue lock a worker
        held when it died mid-send, or on a pipe nobody reads any more. So:
        stop the worker handler (no more replacements), kill and reap every
        worker ourselves, then unblock each of Pool's threads in turn.
        """
        pool = self._pool
        deadline = time.monotonic() + DISMANTLE_SECONDS
        terminate = multiprocessing.pool.TERMINATE
        worker_handler, task_handler, result_handler = pool.handler_threads
        pool._state = terminate
        worker_handler._state = terminate  # type: ignore[attr-defined]
        task_handler._state = terminate  # type: ignore[attr-defined]
        with contextlib.suppress(OSError):
            pool._change_notifier.put(None)
        worker_handler.join(_remaining(deadline))

        processes = self._workers.all()
        for process in processes:
            _kill(process)
        for process in processes:
            _join(process, _remaining(deadline))

        # The task handler ends on this sentinel (the worker handler sends
        # one too unless it died); then it writes a sentinel to the outqueue
        # and one per worker to the inqueue.
        pool._taskqueue.put(None)
        _unstick(pool._outqueue._wlock)
        _drain_until_dead(pool._inqueue._reader, task_handler, deadline)
        if not task_handler.is_alive():
            # No thread of ours writes to the outqueue any more: closing our
            # end gives the result handler EOF, even mid-message.
            pool._outqueue._writer.close()
        result_handler.join(_remaining(deadline))

    def _release(self) -> None:
        pool = self._pool
        # Never run Pool's own finalizer at exit: terminate() can block.
        pool._terminate.cancel()
        pool._state = multiprocessing.pool.TERMINATE
        if not any(t.is_alive() for t in pool.handler_threads):
            for queue in (pool._inqueue, pool._outqueue, pool._change_notifier):
                queue.close()
            # Results that never came (a broken pool) hold their futures.
            pool._cache.clear()
            for process in self._workers.all():
                if not _is_alive(process):
                    with contextlib.suppress(ValueError):
                        process.close()
        else:  # pragma: no cover - only when a thread is wedged
            _log.warning("mp_pool: a Pool thread did not stop; leaving its pipes")
        self._status.close()


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _join(process: BaseProcess, timeout: float) -> None:
    with contextlib.suppress(ValueError):  # closed
        if process.pid is not None:  # started
            process.join(timeout)


def _kill(process: BaseProcess) -> None:
    with contextlib.suppress(ValueError, OSError):  # closed, or already gone
        if process.pid is not None and process.exitcode is None:
            process.kill()


def _is_alive(process: BaseProcess) -> bool:
    try:
        return process.is_alive()
    except ValueError:  # closed, or never started
        return False


def _unstick(lock: Any) -> None:
    """Release ``lock`` if a dead worker left it held (every worker is dead)."""
    if lock is None:  # Windows: message pipes need no lock
        return
    if lock.acquire(timeout=0.5):
        lock.release()
        return
    with contextlib.suppress(ValueError):
        lock.release()


def _drain_until_dead(
    reader: Connection, thread: threading.Thread, deadline: float
) -> None:
    """Read and discard raw bytes from ``reader`` until ``thread`` ends.

    Raw bytes, not messages: a worker killed while reading a large task
    leaves the stream mid-message, and a message-level read could then wait
    forever for bytes that never come.
    """
    if sys.platform == "win32":  # pragma: no cover
        # No SIGPIPE there: with its last reader closed, a write fails.
        reader.close()
        return
    fd = reader.fileno()
    while thread.is_alive() and time.monotonic() < deadline:
        if not wait([reader], 0.05):
            continue
        try:
            if not os.read(fd, 1 << 16):
                return
        except OSError:
            return


# -- errors -------------------------------------------------------------------


def _worker_crashed(exitcode: int | None, pid: int | None) -> WorkerCrashedError:
    return WorkerCrashedError(
        f"a worker process (pid {pid}) of the 'mp_pool' executor died with "
        f"{describe_exitcode(exitcode)}; the pool is broken: every unfinished "
        "task failed (multiprocessing.Pool cannot tell which task a dead worker "
        "held) and no new task can be submitted",
        exitcode,
    )


def _initializer_raised(summary: str, text: str, pid: int | None) -> BaseException:
    error = InitializerFailedError(
        f"the initializer of the 'mp_pool' executor raised in worker pid {pid}: "
        f"{summary}; the executor is broken"
    )
    error.__cause__ = RemoteTraceback(text)
    return error


def _initializer_killed(exitcode: int | None, pid: int | None) -> BaseException:
    return InitializerFailedError(
        f"a worker process (pid {pid}) of the 'mp_pool' executor died with "
        f"{describe_exitcode(exitcode)} while its initializer ran; the executor "
        "is broken"
    )


# -- interpreter exit ---------------------------------------------------------

_live_watchdogs: weakref.WeakSet[_Watchdog] = weakref.WeakSet()


def _python_exit() -> None:
    # Runs when the main thread ends, before atexit hooks: finish the work
    # already submitted, as concurrent.futures does, then close every pool.
    watchdogs = list(_live_watchdogs)
    for watchdog in watchdogs:
        watchdog.close(cancel_futures=False)
    for watchdog in watchdogs:
        watchdog.join()


if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_python_exit)
if hasattr(os, "register_at_fork"):
    # A forked child (a fork-context worker too) runs the hook above when it
    # exits; the parent's pools are none of its business.
    os.register_at_fork(after_in_child=_live_watchdogs.clear)


def _close_abandoned(watchdog: _Watchdog) -> None:
    # The executor was garbage-collected without shutdown(): close when drained.
    with contextlib.suppress(Exception):
        watchdog.close(cancel_futures=False)


# -- the executor -------------------------------------------------------------


class MpPoolExecutor(BaseExecutor):
    """A :class:`multiprocessing.pool.Pool` behind the executors contract.

    A worker that dies breaks the executor for good, as with the stdlib
    process pool: every unfinished future fails with
    :class:`~executors.WorkerCrashedError` and later submits raise it.

    Args:
        max_workers: Worker processes; default: the usable CPUs.
        mp_context: Start method name or multiprocessing context; default
            ``"forkserver"`` on POSIX.
        initializer: Called in each worker as it starts; if it raises or
            kills the worker, the executor breaks with
            :class:`~executors.InitializerFailedError`.
        initargs: Arguments for ``initializer``.
        max_tasks_per_child: Replace a worker after this many tasks (Pool's
            ``maxtasksperchild``); ``None`` keeps workers for the pool's life.
        cloudpickle: Send the callable and the initializer with cloudpickle
            (lambdas and closures work).
    """

    backend = "mp_pool"
    capabilities = Capabilities(survives_worker_death=False)

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        mp_context: str | BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        cloudpickle: bool = True,
    ) -> None:
        workers, context, per_child = check_process_pool_options(
            max_workers=max_workers,
            default_workers=cpu_count(),
            mp_context=mp_context,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
        )
        super().__init__(max_workers=workers, cloudpickle=cloudpickle)
        if initializer is not None:
            initializer = self._prepare(initializer)
        status = _StatusPipe(context)
        registry = _WorkerRegistry(status.wake)
        try:
            pool = _WatchedPool(
                registry.adopt,
                processes=workers,
                initializer=_worker_init,
                initargs=(status.writer, initializer, initargs),
                maxtasksperchild=per_child,
                context=context,
            )
        except BaseException:
            status.close()
            raise
        self._feeder = _Feeder(
            pool,
            DISPATCH_PER_WORKER * workers,
            CHUNK_DISPATCH_PER_WORKER * workers,
            status.wake,
        )
        self._watchdog = _Watchdog(
            pool, self._feeder, registry, status, initializer is not None
        )
        self._status = status
        weakref.finalize(self, _close_abandoned, self._watchdog).atexit = False

    def _broken_error(self) -> BaseException | None:
        return self._feeder.broken_error()

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        future: Future[T] = Future()
        try:
            payload = _dumps((fn, args, kwargs))
        except Exception as exc:
            # Fails this future at once; the pool never sees the task.
            future.set_exception(exc)
            return future
        self._feeder.submit(_WorkItem(future, payload))
        return future

    def _submit_chunk(
        self, fn: Callable[..., Any], chunk: Chunk
    ) -> Future[ChunkResult]:
        # Pickled by Pool's task thread (see _Pickled); map raises a
        # pickling error at the chunk's position either way.
        future: Future[ChunkResult] = Future()
        payload = _Pickled((run_chunk, (fn, chunk), {}))
        self._feeder.submit(_WorkItem(future, payload, chunk=True))
        return future

    def _interrupt(self) -> None:
        # Ctrl-C leaving a ``with`` block: cancel what is queued, fail what
        # runs, and let the watchdog kill the workers now.
        self._watchdog.close(cancel_futures=True)
        self._feeder.break_(
            functools.partial(
                BrokenExecutor,
                "the 'mp_pool' executor was interrupted (KeyboardInterrupt); "
                "its running tasks were stopped",
            )
        )
        self._status.wake()

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self._watchdog.close(cancel_futures)
        if wait:
            self._watchdog.join()
