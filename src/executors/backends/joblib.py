"""Backend ``joblib``: joblib's workers behind the contract.

Each executor owns its workers. With ``joblib_backend="loky"`` (the default)
they are a loky :class:`~joblib.externals.loky.process_executor.
ProcessPoolExecutor` made for this executor alone and configured the way
joblib configures its own (memmapping of large numpy arrays, BLAS/OpenMP
thread limits in the workers, cloudpickle), but never joblib's process-wide
*reusable* executor: two executors never share, resize or shut down each
other's workers, and ``shutdown()`` stops them (joblib keeps its workers for
300 s). ``"threading"`` runs tasks on a thread pool of the executor's own,
``"multiprocessing"`` on joblib's :class:`~joblib.pool.MemmappingPool`.

Data flow::

    submit(fn, *args)     map(fn, xs)                map(fn, xs)
        |                 map_engine="shared"        map_engine="parallel"
        |                 (default): the project's   joblib.Parallel(return_as=
        |                 chunks, via submit         "generator[_unordered]")
        |                     |                          | a BatchedCalls per
        v                     v                          v batch
    _Task(fn, args) ----> _Feeder: our stdlib futures, FIFO; a queued one
                            |      can still be cancelled
                            | at most 2 * workers + 1 handed over at once
                            v
             the pool's submit / apply_async --> worker processes
                            |
    pool callback --> _Feeder._settle --> translate_error() --> our Future

**submit.** joblib has no public ``submit``: it is built on the pool joblib
itself runs loky on. The feeder exists because loky's futures are a
*subclass* of the stdlib's that tells nobody when a task starts; handing
tasks over a few at a time keeps every future we return a plain
:class:`concurrent.futures.Future` whose ``cancel()`` works while the task
is queued and fails once the task is with the workers, as with the stdlib
pool's call queue. The cost is one extra future and one callback per task.

**map.** The default engine is the project's shared map on the same
workers: measured against routing through ``joblib.Parallel`` it is several
times faster on small tasks and on large arrays (``Parallel`` polls for
results every 10 ms and starts batching at one item), large numpy arguments
are still memmapped (the reducers belong to the pool), and every option of
the contract holds. ``map_engine="parallel"`` routes each call through
``joblib.Parallel`` with joblib's ``batch_size`` and ``pre_dispatch``,
except where joblib cannot keep the contract: a ``timeout`` (joblib's
generator blocks in a polling loop that cannot be bounded from outside), a
``buffersize`` (joblib reads the input as batches complete, not as results
are consumed) and a single worker (joblib runs ``n_jobs=1`` in the caller)
use the shared map. There each item runs inside :class:`_Guarded`, so a
failing item comes back as a value at its position instead of making joblib
abort the call: the map yields every earlier result, then raises.

**Errors** are translated in :func:`translate_error` and nowhere else.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing.connection
import multiprocessing.context
import os
import pickle
import re
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future
from concurrent.futures.thread import BrokenThreadPool
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
from typing import Any, ClassVar, TypeVar

import joblib
from joblib._parallel_backends import (
    AutoBatchingMixin,
    LokyBackend,
    ParallelBackendBase,
)
from joblib._utils import eval_expr
from joblib.disk import memstr_to_bytes
from joblib.externals.loky.backend import get_context as loky_get_context
from joblib.externals.loky.backend.reduction import dumps as loky_dumps
from joblib.externals.loky.process_executor import (
    BrokenProcessPool as LokyBrokenProcessPool,
)
from joblib.externals.loky.process_executor import (
    ProcessPoolExecutor as LokyProcessPoolExecutor,
)
from joblib.externals.loky.process_executor import (
    ShutdownExecutorError,
    TerminatedWorkerError,
)

from .._base import BaseExecutor, fail_futures
from .._capabilities import Capabilities
from .._errors import InitializerFailedError, WorkerCrashedError, describe_exitcode
from .._map import _progress_bar
from .._options import (
    check_initializer,
    check_map_arguments,
    check_max_tasks_per_child,
    check_max_workers,
    check_timeout,
    cpu_count,
    resolve_mp_context,
)
from .._parentwatch import exit_with_parent
from .._remote import picklable_exception
from .._serialize import portable

__all__ = ["JOBLIB_BACKENDS", "MAP_ENGINES", "JoblibExecutor", "translate_error"]

T = TypeVar("T")

#: The joblib backends an executor can run on.
JOBLIB_BACKENDS = ("loky", "threading", "multiprocessing")
#: What runs ``map``: the project's shared map, or ``joblib.Parallel``.
MAP_ENGINES = ("shared", "parallel")

# Tasks handed to the workers at once, per worker, plus one. Two per worker
# keep a worker busy on tiny tasks (one running, one waiting in its queue);
# every task beyond that stays in our queue, where cancel() still works.
_HANDED_OVER_PER_WORKER = 2

# Exit code of a worker whose initializer raised. Loky logs the error and
# lets the worker end with code 0, which looks like a clean exit; a code of
# our own tells "the initializer failed" apart from "a task crashed" (a task
# that calls os._exit(117) itself would be reported as an initializer
# failure: an accepted ambiguity).
INITIALIZER_FAILED_EXITCODE = 117

# loky's message for a task it could not pickle; it keeps only the text of
# the pickler's error (as __cause__), not the error itself.
_LOKY_PICKLING_FAILED = "Could not pickle the task to send it to the workers."

# loky's TerminatedWorkerError message lists the exit codes of the dead
# workers as "{EXIT(3), SIGKILL(-9)}".
_EXITCODES = re.compile(r"exit codes of the workers are \{([^}]*)\}")
_ONE_EXITCODE = re.compile(r"\((-?\d+)\)")


# -- what travels to the workers ----------------------------------------


class _Failure:
    """A task's exception, returned as a value instead of raised.

    Returning it keeps the worker's traceback (as ``__cause__`` after the
    trip), survives exceptions that cannot be pickled (loky would lose its
    worker on those: the whole pool breaks), and lets ``Parallel`` deliver
    the results before a failing item instead of aborting the call.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        # Reached only across a process boundary: attach the traceback there.
        return _Failure, (picklable_exception(self.error),)


class _Guarded:
    """``fn`` for one ``Parallel`` item: a raised exception becomes a value.

    One instance per map is shared by every item of a batch, so it is
    pickled once per batch.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        try:
            return self.fn(*args)
        except BaseException as exc:
            return _Failure(exc)

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return _Guarded, (self.fn,)


class _Task:
    """One call sent to a worker; its exception comes back as a :class:`_Failure`.

    Args:
        fn: The callable.
        args: Its positional arguments.
        kwargs: Its keyword arguments.
        before_pickling: Called when the task is pickled, before its
            arguments are: it points joblib's memmapping reducer at this
            executor's temporary folder (``Parallel`` batches then point it at
            their own, as they do on joblib's executor).
    """

    __slots__ = ("args", "before_pickling", "fn", "kwargs")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        before_pickling: Callable[[], None] | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.before_pickling = before_pickling

    def __call__(self) -> Any:
        try:
            return self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            return _Failure(exc)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self.before_pickling is not None:
            self.before_pickling()
        return _Task, (self.fn, self.args, self.kwargs)


class _Initializer:
    """Start watching the caller, then run the user's initializer.

    Every worker ends within moments of the caller's death: a loky worker
    holds both ends of its call-queue pipe, so it would never see EOF and
    would outlive a caller killed with SIGKILL for good (and keep loky's
    resource tracker alive with it). If the user's initializer raises, the
    worker exits with a code of ours.

    Installed even without a user initializer: unpickling it imports this
    module (and joblib, and NumPy) while the worker boots, beside the other
    workers. Otherwise a fresh worker would import them while unpickling its
    first task, and joblib's ``MemmappingPool`` unpickles under the lock of
    its task queue, so the other workers could not take a task meanwhile.

    Args:
        fn: The user's initializer, or ``None``.
        args: Its arguments.
        caller_pid: The pid of the process that owns the pool, read there
            (under forkserver a worker's parent is the fork server).
    """

    __slots__ = ("args", "caller_pid", "fn")

    def __init__(
        self,
        fn: Callable[..., object] | None,
        args: tuple[Any, ...],
        caller_pid: int,
    ) -> None:
        self.fn = fn
        self.args = args
        self.caller_pid = caller_pid

    def __call__(self) -> None:
        exit_with_parent(self.caller_pid)
        if self.fn is None:
            return
        try:
            self.fn(*self.args)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(INITIALIZER_FAILED_EXITCODE)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _Initializer, (self.fn, self.args, self.caller_pid)


# -- the one error boundary -------------------------------------------------


def _exitcodes(message: str) -> list[int]:
    found = _EXITCODES.search(message)
    if found is None:
        return []
    return [int(code) for code in _ONE_EXITCODE.findall(found.group(1))]


def _pickling_error(task: _Task) -> BaseException | None:
    """Pickle ``task``'s call again, the way loky does; return what it raises.

    loky keeps only the text of the error that stopped it from sending a
    task. Pickling the same objects again raises that error once more, with
    its own type and message; this runs only after a failure, so sending a
    task costs nothing extra. No memmapping reducers: they would write the
    task's arrays to disk for nothing.
    """
    try:
        loky_dumps((task.fn, task.args, task.kwargs))
    except Exception as exc:
        return exc
    return None  # it pickles now: keep loky's error


def translate_error(exc: BaseException, task: object = None) -> BaseException:
    """Turn a pool's infrastructure error into the project's; others pass.

    This is the only place where joblib's and loky's errors are translated.
    A dead loky worker (:class:`~joblib.externals.loky.process_executor.
    TerminatedWorkerError`) becomes :class:`executors.WorkerCrashedError`
    carrying the exit code loky reported, or
    :class:`executors.InitializerFailedError` when the initializer raised;
    loky's other :class:`BrokenProcessPool` errors (a task or result that
    failed to unpickle) become :class:`executors.WorkerCrashedError` without
    an exit code. The original error is kept as ``__cause__``. loky's
    ``PicklingError("Could not pickle the task ...")`` becomes the error the
    pickler raised (a ``TypeError`` for a lock, as on every other backend),
    with loky's traceback of it as ``__cause__``. A task's own exception
    never reaches this function: it travels as a value.

    Args:
        exc: The exception a pool reported for a task.
        task: The :class:`_Task` the pool failed to run, if known: needed to
            recover a pickling error.

    Returns:
        A new exception instance to set on one future, or ``exc`` itself.
    """
    if (
        type(exc) is pickle.PicklingError
        and str(exc) == _LOKY_PICKLING_FAILED
        and isinstance(task, _Task)
    ):
        original = _pickling_error(task)
        if original is not None:
            # As `raise original from cause` would.
            original.__cause__ = exc.__cause__
            original.__suppress_context__ = True
            return original
        return exc
    if isinstance(exc, TerminatedWorkerError):
        codes = _exitcodes(str(exc))
        if INITIALIZER_FAILED_EXITCODE in codes:
            exitcode: int | None = INITIALIZER_FAILED_EXITCODE
        else:
            exitcode = next((code for code in codes if code != 0), None)
            if exitcode is None and codes:
                exitcode = codes[0]
        error = _crash_error(exitcode)
        error.__cause__ = exc
        return error
    if isinstance(exc, LokyBrokenProcessPool):
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = WorkerCrashedError(
            f"the 'joblib' executor is broken: {first_line}", None
        )
        error.__cause__ = exc
        return error
    if isinstance(exc, WorkerCrashedError):
        # Raised by our multiprocessing watcher: a fresh copy per future.
        error = WorkerCrashedError(str(exc), exc.exitcode)
        error.__cause__ = exc.__cause__
        return error
    if isinstance(exc, InitializerFailedError):
        return InitializerFailedError(str(exc))
    if isinstance(exc, MaybeEncodingError):
        # multiprocessing.Pool's name for "the result could not be pickled".
        return pickle.PicklingError(f"the task's result could not be pickled: {exc}")
    if isinstance(exc, BrokenThreadPool):
        # A thread pool breaks for one reason only: an initializer raised.
        error = InitializerFailedError(
            f"the initializer of the 'joblib' executor raised in a thread: {exc}"
        )
        error.__cause__ = exc
        return error
    if isinstance(exc, ShutdownExecutorError):
        # loky's messages: the stdlib's "cannot schedule new futures after
        # shutdown" from submit, or "... shutdown with kill_workers=True
        # before this job could complete" for a task stopped by Ctrl-C.
        return RuntimeError(str(exc))
    return exc


# -- the feeder: our futures, handed to a pool a few at a time -------------

# Feeders with work, for the exit hook below.
_live_feeders: weakref.WeakSet[_Feeder] = weakref.WeakSet()
# Executors whose workers may still run, to stop at an interrupted exit.
_live_executors: weakref.WeakSet[JoblibExecutor] = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_after_loky = False


def _finish_pending_at_exit() -> None:
    """Let queued tasks run before the pools stop at interpreter exit.

    The stdlib pools finish their pending work when the main thread ends;
    so do loky's, but loky refuses new tasks from then on, and our queue
    hands tasks over as earlier ones complete. This hook runs first and
    waits until every feeder is idle.

    A program ended by an unhandled Ctrl-C, or interrupted again while this
    hook waits, stops instead, as leaving a ``with`` block on Ctrl-C does:
    it must not wait for a long ``map`` it was interrupted in. A
    ``KeyboardInterrupt`` must not escape this hook either: it would skip
    loky's own hook, loky's workers would never be told to stop, and the
    interpreter would wait for them forever (leaving them orphaned, with
    the resource trackers, once it is killed).
    """
    try:
        if not _ending_on_keyboard_interrupt():
            for feeder in list(_live_feeders):
                feeder.wait_idle()
            return
    except KeyboardInterrupt:
        pass
    for executor in list(_live_executors):
        executor._interrupt()


def _ending_on_keyboard_interrupt() -> bool:
    """Whether the interpreter is exiting because of an unhandled Ctrl-C.

    Python stores an unhandled exception as ``sys.last_exc``
    (``sys.last_value`` before 3.12) before it runs the threading exit
    hooks. In an interactive session it holds the last error shown.
    """
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)


def _ensure_exit_hook() -> None:
    """Register :func:`_finish_pending_at_exit` to run before loky's hook.

    Hooks registered with ``threading._register_atexit`` run last-in first
    out, and loky registers its own when its first pool starts: ours must be
    registered after that. Until a loky pool has started, every call
    registers once more (the hook is idempotent); after, never again.
    """
    global _exit_hook_after_loky
    from joblib.externals.loky import process_executor

    with _exit_hook_lock:
        if _exit_hook_after_loky:
            return
        loky_hooked = process_executor.process_pool_executor_at_exit is not None
        threading._register_atexit(_finish_pending_at_exit)  # type: ignore[attr-defined]
        _exit_hook_after_loky = loky_hooked


class _Feeder:
    """Hands tasks to a pool a few at a time and settles our futures.

    Every future it returns is a plain stdlib :class:`Future`. A task waits
    in a FIFO queue (``cancel()`` works) until fewer than ``limit`` tasks are
    with the pool; it is then marked running and handed over. A pool future
    completes in the pool's callback thread: the outcome is copied to ours
    (with :func:`translate_error` applied), then the next task is handed over.

    Args:
        launch: Hands one task to the pool and returns the pool's future
            (anything with ``add_done_callback``, ``exception`` and
            ``result``).
        limit: Tasks with the pool at once.
    """

    def __init__(self, launch: Callable[[Any], Any], limit: int) -> None:
        self._launch = launch
        self._limit = limit
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: deque[tuple[Future[Any], Any]] = deque()
        self._handed = 0
        self._closing = False
        self._on_idle: Callable[[], None] | None = None
        self._feeding = threading.local()
        self._hooked = False
        #: The first infrastructure error a pool reported; the pool is
        #: broken for good from then on.
        self.broken: BaseException | None = None
        _live_feeders.add(self)

    def submit(self, task: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            self._queue.append((fut, task))
        self._feed()
        return fut

    def _feed(self) -> None:
        # A pool future may complete inside the launch call (a broken pool,
        # a fast thread); its callback then calls _feed again in the same
        # thread. Let the outer loop do that work instead of recursing once
        # per task.
        if getattr(self._feeding, "active", False):
            return
        self._feeding.active = True
        try:
            while True:
                with self._lock:
                    if self._handed >= self._limit or not self._queue:
                        return
                    fut, task = self._queue.popleft()
                    self._handed += 1
                self._start(fut, task)
        finally:
            self._feeding.active = False

    def _start(self, fut: Future[Any], task: Any) -> None:
        if not fut.set_running_or_notify_cancel():
            self._release()
            return
        broken = self.broken
        if broken is not None:
            fut.set_exception(translate_error(broken))
            self._release()
            return
        try:
            theirs = self._launch(task)
        except BaseException as exc:
            self._note(exc)
            fut.set_exception(translate_error(exc))
            self._release()
            return
        if not self._hooked:
            # After the first launch: loky has registered its exit hook.
            self._hooked = True
            _ensure_exit_hook()
        theirs.add_done_callback(functools.partial(self._settle, fut, task))

    def _settle(self, fut: Future[Any], task: Any, theirs: Any) -> None:
        error = theirs.exception()
        if error is not None:
            self._note(error)
            fut.set_exception(translate_error(error, task))
        else:
            value = theirs.result()
            if type(value) is _Failure:
                fut.set_exception(value.error)
            else:
                fut.set_result(value)
        # Only now: the future's callbacks (a Parallel call dispatching its
        # next batch) have queued their tasks, so "idle" below is true idle.
        self._release()
        self._feed()

    def _release(self) -> None:
        hook = None
        with self._lock:
            self._handed -= 1
            if self._handed == 0 and not self._queue:
                self._idle.notify_all()
                if self._closing:
                    hook, self._on_idle = self._on_idle, None
        if hook is not None:
            hook()

    def _note(self, error: BaseException) -> None:
        # Task exceptions travel as _Failure values, so any BrokenExecutor
        # here is the pool's own.
        if self.broken is None and isinstance(error, futures.BrokenExecutor):
            self.broken = error

    def close(self, cancel_futures: bool, on_idle: Callable[[], None]) -> None:
        """Stop for good once idle; ``on_idle`` runs then (maybe right now).

        Tasks already queued are still handed over (unless cancelled), and so
        are tasks that running ``map`` calls dispatch as their batches
        complete, so that ``shutdown(wait=False)`` lets work finish.
        """
        dropped: list[Future[Any]] = []
        with self._lock:
            if cancel_futures:
                # Every queued future is pending: cancel() succeeds.
                dropped = [fut for fut, _ in self._queue if fut.cancel()]
                self._queue.clear()
            if self._closing:
                run_now = False
            else:
                self._closing = True
                run_now = self._handed == 0 and not self._queue
                if not run_now:
                    self._on_idle = on_idle
            if self._handed == 0 and not self._queue:
                self._idle.notify_all()
        # cancel() wakes result() only; this wakes wait() and as_completed().
        for fut in dropped:
            fut.set_running_or_notify_cancel()
        if run_now:
            on_idle()

    def wait_idle(self) -> None:
        """Block until no task is queued or with the pool."""
        with self._idle:
            while self._handed or self._queue:
                self._idle.wait()


# -- the pools -----------------------------------------------------------------


class _LokyPool(LokyProcessPoolExecutor):  # type: ignore[misc]
    """A loky pool with the attribute joblib's ``Parallel`` expects of one.

    ``Parallel`` reaches ``backend._workers._temp_folder_manager`` to point
    the memmapping reducer at its own temporary folder; joblib sets the same
    attribute on the executors it creates.
    """

    _temp_folder_manager: Any = None


def _thread_limits(workers: int, inner_max_num_threads: int | None) -> dict[str, str]:
    """Environment for loky workers: joblib's guard against oversubscription.

    Each worker's BLAS/OpenMP pools get ``cpus // workers`` threads unless
    the variable is already set, exactly as joblib's loky backend does.
    """
    default = max(cpu_count() // workers, 1)
    env = {}
    for var in ParallelBackendBase.MAX_NUM_THREADS_VARS:
        if inner_max_num_threads is not None:
            env[var] = str(inner_max_num_threads)
        else:
            env[var] = os.environ.get(var, str(default))
    if ParallelBackendBase.TBB_ENABLE_IPC_VAR not in os.environ:
        env[ParallelBackendBase.TBB_ENABLE_IPC_VAR] = "1"
    return env


def _loky_context(value: object) -> multiprocessing.context.BaseContext:
    """Map ``mp_context`` onto a start method loky supports."""
    if value is None:
        # joblib's own default: fork followed by exec, so a worker never
        # inherits the parent's threads and locks, like "spawn".
        return loky_get_context("loky")  # type: ignore[no-any-return]
    if isinstance(value, str):
        if not value:
            raise ValueError("mp_context must not be an empty string")
        if value == "fork":
            raise ValueError(
                "the 'joblib' backend does not support mp_context='fork': loky "
                "workers must not inherit the parent's threads; use 'loky' (the "
                "default), 'spawn' or 'forkserver'"
            )
        try:
            return loky_get_context(value)  # type: ignore[no-any-return]
        except ValueError:
            raise ValueError(
                f"mp_context {value!r} is not a start method loky supports; "
                "choose one of 'loky', 'loky_init_main', 'spawn', 'forkserver'"
            ) from None
    if isinstance(value, multiprocessing.context.BaseContext):
        if value.get_start_method() == "fork":
            raise ValueError(
                "the 'joblib' backend does not support a 'fork' mp_context; "
                "use 'loky' (the default), 'spawn' or 'forkserver'"
            )
        return value
    raise TypeError(
        "mp_context must be None, a start method name or a multiprocessing "
        f"context, got {value!r}"
    )


class _PoolWatcher(threading.Thread):
    """Breaks the executor when its ``multiprocessing.Pool`` would hang.

    The pool replaces a dead worker silently and the task it held never
    completes (CPython bpo-22393, open as gh-96062); a result that fails to
    unpickle kills its result-handler thread, after which nothing completes.
    The watcher waits on the workers' sentinels and reports the first worker
    that exits with a non-zero code (a replacement after
    ``max_tasks_per_child`` exits with 0), or a dead result handler.

    Args:
        pool: The pool to watch.
        on_broken: Called once, in this thread, with the error to report.
    """

    # Seconds between looks at the pool's worker list, which the pool
    # changes as it replaces workers: short enough to notice a crash quickly.
    POLL = 0.1
    # How long a dead worker is left for Pool's handler to reap before its
    # exit code is read here (see run()): a few of Pool's 0.1 s rounds.
    REAP_GRACE = 1.0

    def __init__(self, pool: Any, on_broken: Callable[[BaseException], None]) -> None:
        super().__init__(name="executors-joblib-watcher", daemon=True)
        self._pool = pool
        self._on_broken = on_broken
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Stop watching (before the pool is closed or terminated on purpose)."""
        self._stopping.set()

    def run(self) -> None:
        known: dict[int, Any] = {}
        dead_since: dict[int, float] = {}
        while not self._stopping.is_set():
            # Workers are kept here even after the pool has forgotten them,
            # so that one that died between two looks is still seen.
            for process in list(self._pool._pool):
                if process.pid is not None:
                    known.setdefault(process.pid, process)
            sentinels = [process.sentinel for process in known.values()]
            multiprocessing.connection.wait(sentinels, timeout=self.POLL)
            if self._stopping.is_set():
                return
            in_pool = {process.pid for process in self._pool._pool}
            ready = set(multiprocessing.connection.wait(sentinels, timeout=0))
            now = time.monotonic()
            for pid, process in list(known.items()):
                if process.sentinel not in ready:
                    continue
                # Pool's own handler reaps its dead workers within ~0.1 s.
                # With forkserver the exit code is read from a pipe once: a
                # second reader at the same moment gets 255 instead of the
                # real code (a clean max_tasks_per_child retirement would
                # look like a crash). Let Pool read it, then use its result.
                first_seen = dead_since.setdefault(pid, now)
                if pid in in_pool and now - first_seen < self.REAP_GRACE:
                    continue
                exitcode = process.exitcode
                if exitcode is None:
                    continue
                del known[pid]
                dead_since.pop(pid, None)
                if exitcode != 0:
                    self._on_broken(_crash_error(exitcode))
                    return
            if not self._pool._result_handler.is_alive():
                self._on_broken(
                    WorkerCrashedError(
                        "the 'joblib' executor is broken: a result failed to "
                        "unpickle in the caller and multiprocessing.Pool stopped "
                        "delivering results",
                        None,
                    )
                )
                return


def _crash_error(exitcode: int | None) -> BaseException:
    if exitcode == INITIALIZER_FAILED_EXITCODE:
        return InitializerFailedError(
            "the initializer of the 'joblib' executor raised in a worker "
            "(its traceback was printed to stderr); the executor is broken"
        )
    return WorkerCrashedError(
        "a worker process of the 'joblib' executor died unexpectedly "
        f"({describe_exitcode(exitcode)}) while tasks were pending; "
        "the executor is broken and every unfinished task failed",
        exitcode,
    )


def _close_pipes(pool: Any) -> None:
    """Close a stopped ``MemmappingPool``'s file descriptors now.

    joblib's pickling queues hold closures that refer back to them, and
    ``multiprocessing.Pool`` never closes its worker ``Process`` objects:
    without this their pipes stay open until the pool is garbage collected,
    which leaks descriptors across create/shutdown cycles.
    """
    for name in ("_inqueue", "_outqueue", "_change_notifier"):
        queue = getattr(pool, name, None)
        for end in ("_reader", "_writer"):
            connection = getattr(queue, end, None)
            if connection is not None:
                with contextlib.suppress(OSError):
                    connection.close()
    for process in list(getattr(pool, "_pool", ())):
        # ValueError: still running (it cannot be, after join()).
        with contextlib.suppress(ValueError):
            process.close()


class _MpLauncher:
    """Hands tasks to a ``multiprocessing.Pool`` and fails them if it breaks.

    ``apply_async`` has no future: each task gets a stdlib one, settled by
    the pool's callbacks. When the watcher reports a crash, the pool is
    terminated and the tasks it held, which it would never complete, fail.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._held: set[Future[Any]] = set()
        #: The error the watcher reported; the pool is gone from then on.
        self.broken: BaseException | None = None

    def launch(self, task: Any) -> Future[Any]:
        if self.broken is not None:
            raise translate_error(self.broken)
        theirs: Future[Any] = Future()
        theirs.set_running_or_notify_cancel()
        with self._lock:
            self._held.add(theirs)
        theirs.add_done_callback(self._forget)
        try:
            self._pool.apply_async(
                task, callback=theirs.set_result, error_callback=theirs.set_exception
            )
        except ValueError:
            # "Pool not running": closed by shutdown() or terminated.
            self._forget(theirs)
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        return theirs

    def _forget(self, theirs: Future[Any]) -> None:
        with self._lock:
            self._held.discard(theirs)

    def broke(self, error: BaseException) -> None:
        """Stop the pool and fail the tasks it held (in the watcher thread)."""
        self.broken = error
        # The feeder gives each future its own copy (translate_error).
        self.stop(lambda: error)

    def stop(self, make_error: Callable[[], BaseException]) -> None:
        """Terminate the workers now; the tasks they held fail."""
        self._pool.terminate()
        with self._lock:
            held = list(self._held)
        fail_futures(held, make_error)


# -- joblib's side: Parallel running on this executor's workers ---------------


class _OwnWorkersMixin:
    """A joblib backend that runs ``Parallel``'s batches on one executor.

    ``submit`` hands a batch to the executor's feeder and ``abort_everything``
    cancels only this call's queued batches: joblib's own loky backend kills
    every worker of its executor on abort, which here would kill other
    tasks of the same executor.
    """

    supports_retrieve_callback = True
    parallel: Any

    def __init__(self, owner: JoblibExecutor, bar: Any, **kwargs: Any) -> None:
        super().__init__(nesting_level=0, **kwargs)  # type: ignore[call-arg]
        self._owner = owner
        self._bar = bar
        self._pending: set[Future[Any]] = set()
        self._pending_lock = threading.Lock()

    def effective_n_jobs(self, n_jobs: int) -> int:
        return self._owner.max_workers

    def configure(
        self, n_jobs: int = 1, parallel: Any = None, **backend_kwargs: Any
    ) -> int:
        # Memmapping options live on the pool (they shape its pickler); the
        # ones Parallel passes here are ignored.
        self.parallel = parallel
        self._owner._attach_parallel(self, parallel)
        return self._owner.max_workers

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        fut = self._owner._submit_internal(func)
        with self._pending_lock:
            self._pending.add(fut)
        if self._bar is not None:
            size = len(func)
            fut.add_done_callback(
                lambda f: None if f.cancelled() else self._bar.update(size)
            )
        if callback is not None:
            fut.add_done_callback(callback)
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: Future[Any]) -> None:
        with self._pending_lock:
            self._pending.discard(fut)

    def retrieve_result_callback(self, fut: Future[Any]) -> Any:
        try:
            return fut.result()
        except futures.CancelledError:
            raise
        except BaseException as exc:
            # An infrastructure failure: deliver it at the batch's position,
            # after the earlier results, like a failing item.
            return [_Failure(exc)]

    def abort_everything(self, ensure_ready: bool = True) -> None:
        with self._pending_lock:
            pending = list(self._pending)
        for fut in pending:
            fut.cancel()


class _LokyOnOwnWorkers(_OwnWorkersMixin, LokyBackend):  # type: ignore[misc]
    """``Parallel`` on this executor's loky pool (``isinstance`` LokyBackend:
    ``Parallel`` then gives each call its own memmapping folder)."""


class _ThreadsOnOwnWorkers(_OwnWorkersMixin, ParallelBackendBase):  # type: ignore[misc]
    """``Parallel`` on this executor's threads: one item per batch, as joblib."""

    uses_threads = True
    supports_sharedmem = True

    def terminate(self) -> None:
        pass


class _MpOnOwnWorkers(_OwnWorkersMixin, AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """``Parallel`` on this executor's MemmappingPool, with joblib's auto-batching.

    Not a ``LokyBackend``: batches use the pool's memmapping folder, which
    the pool removes when it stops.
    """

    def terminate(self) -> None:
        self.reset_batch_stats()


class _StopMap(Exception):
    """Thrown into joblib's generator to end a ``map`` early, quietly."""


class _ParallelResults(Iterator[Any]):
    """The iterator a ``Parallel``-based ``map`` returns.

    Raises a failed item's exception at its position. Ending early (a
    failure, ``close()``, garbage collection) throws :class:`_StopMap` into
    joblib's generator: joblib then aborts the call (our backend cancels its
    queued batches) without the "tasks have been executed but not used"
    warning that closing its generator would print.
    """

    def __init__(self, outputs: Generator[Any, None, None], bar: Any) -> None:
        self._outputs = outputs
        self._bar = bar
        self._done = False

    def __iter__(self) -> _ParallelResults:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            value = next(self._outputs)
        except BaseException:
            self._finish()
            raise
        if type(value) is _Failure:
            self.close()
            raise value.error
        return value

    def _finish(self) -> None:
        self._done = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        """Stop the map: cancel its queued work and release joblib's call."""
        if self._done:
            return
        self._finish()
        with contextlib.suppress(_StopMap, StopIteration):
            self._outputs.throw(_StopMap())

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _stream(results: _ParallelResults) -> Generator[Any, None, None]:
    """The results as a generator, like the shared map's.

    ``yield from`` closes ``results`` when this generator is closed; a
    generator dropped before it started is closed by ``results.__del__``.
    """
    try:
        yield from results
    finally:
        results.close()


# -- the executor ---------------------------------------------------------------


class JoblibExecutor(BaseExecutor):
    """An executor on joblib's workers (loky by default), each its own.

    Every executor owns its workers (see the module docstring): a loky pool
    by default, never joblib's shared reusable executor. ``capabilities``
    depends on ``joblib_backend``: ``"threading"`` declares
    ``process_isolation=False``.

    Args:
        max_workers: Workers; default: the usable CPUs. Also ``Parallel``'s
            ``n_jobs``.
        joblib_backend: ``"loky"`` (default), ``"threading"`` or
            ``"multiprocessing"``.
        mp_context: Start method. loky: ``None`` means loky's own ``"loky"``
            (fork then exec); ``"spawn"``, ``"forkserver"`` and
            ``"loky_init_main"`` are accepted, ``"fork"`` is rejected.
            multiprocessing: as for the ``process`` backend (default
            ``"forkserver"``). threading: must be ``None``.
        initializer: Called in each worker as it starts; if it raises, the
            executor is broken (:class:`executors.InitializerFailedError`).
        initargs: Arguments for ``initializer``.
        max_tasks_per_child: Replace a worker after this many tasks; only
            with ``joblib_backend="multiprocessing"`` (loky has no such
            setting).
        idle_worker_timeout: loky only: seconds after which an idle worker
            exits (loky starts a new one on demand). Default ``None``: workers
            live until ``shutdown()``.
        map_engine: What runs ``map`` and ``map_unordered``: ``"shared"``
            (default), the project's map on these workers, or ``"parallel"``,
            ``joblib.Parallel`` with a streaming generator wherever it can
            keep the contract (see the module docstring).
        batch_size: ``Parallel``'s ``batch_size`` when ``chunksize`` is
            ``None``: ``"auto"`` (the default) or an int. Needs
            ``map_engine="parallel"``.
        pre_dispatch: ``Parallel``'s ``pre_dispatch``: items dispatched at the
            call, the rest as batches complete; ``"2 * n_jobs"`` by default.
            Needs ``map_engine="parallel"``.
        max_nbytes: Numpy arrays larger than this are sent to process workers
            as memory maps (joblib's memmapping), by ``submit`` and by either
            map engine; ``None`` disables it. Default ``"1M"``.
        mmap_mode: Mode of those memory maps in the workers; default ``"r"``.
        temp_folder: Where the memory maps are written; default: joblib's
            choice (``/dev/shm`` when large enough).
        inner_max_num_threads: Threads of BLAS/OpenMP pools in each loky
            worker; default ``cpus // max_workers`` unless set in the
            environment (joblib's default).
        cloudpickle: Wrap the callable for cloudpickle in the base class.
            Default ``None``: only where the pool's pickler needs it
            (``"multiprocessing"``); loky already pickles with cloudpickle.
    """

    backend: ClassVar[str] = "joblib"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        joblib_backend: str = "loky",
        mp_context: str | multiprocessing.context.BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        idle_worker_timeout: float | None = None,
        map_engine: str = "shared",
        batch_size: int | str | None = None,
        pre_dispatch: int | str | None = None,
        max_nbytes: int | str | None = "1M",
        mmap_mode: str | None = "r",
        temp_folder: str | None = None,
        inner_max_num_threads: int | None = None,
        cloudpickle: bool | None = None,
    ) -> None:
        if joblib_backend not in JOBLIB_BACKENDS:
            raise ValueError(
                f"joblib_backend must be one of {', '.join(map(repr, JOBLIB_BACKENDS))}"
                f", got {joblib_backend!r}"
            )
        workers = check_max_workers(max_workers, default=cpu_count())
        check_initializer(initializer, initargs)
        per_child = check_max_tasks_per_child(max_tasks_per_child)
        if per_child is not None and joblib_backend != "multiprocessing":
            raise ValueError(
                "the 'joblib' backend supports max_tasks_per_child only with "
                "joblib_backend='multiprocessing': loky workers are replaced "
                "only when they leak memory or sit idle (see idle_worker_timeout)"
            )
        idle = check_timeout(idle_worker_timeout, "idle_worker_timeout")
        if idle is not None and joblib_backend != "loky":
            raise ValueError(
                "idle_worker_timeout is a loky setting: it needs joblib_backend='loky'"
            )
        if map_engine not in MAP_ENGINES:
            raise ValueError(
                f"map_engine must be one of {', '.join(map(repr, MAP_ENGINES))}, "
                f"got {map_engine!r}"
            )
        if map_engine != "parallel":
            for name, value in (
                ("batch_size", batch_size),
                ("pre_dispatch", pre_dispatch),
            ):
                if value is not None:
                    raise ValueError(
                        f"{name} is a joblib.Parallel setting: it needs "
                        "map_engine='parallel'"
                    )
        self._map_engine = map_engine
        self._batch_size = _check_batch_size(
            "auto" if batch_size is None else batch_size
        )
        self._pre_dispatch = _check_pre_dispatch(
            "2 * n_jobs" if pre_dispatch is None else pre_dispatch, workers
        )
        nbytes = _check_max_nbytes(max_nbytes)
        if mmap_mode not in ("r", "r+", "w+", "c", None):
            raise ValueError(
                f"mmap_mode must be 'r', 'r+', 'w+', 'c' or None, got {mmap_mode!r}"
            )
        if temp_folder is not None and not isinstance(temp_folder, (str, os.PathLike)):
            raise TypeError(f"temp_folder must be a path or None, got {temp_folder!r}")
        if inner_max_num_threads is not None and (
            not isinstance(inner_max_num_threads, int)
            or isinstance(inner_max_num_threads, bool)
            or inner_max_num_threads < 1
        ):
            raise ValueError(
                "inner_max_num_threads must be an int >= 1 or None, "
                f"got {inner_max_num_threads!r}"
            )
        if cloudpickle is None:
            # loky pickles everything with cloudpickle already; wrapping the
            # callable again would only add a layer. multiprocessing.Pool
            # pickles with the standard pickler: lambdas need the wrapper.
            cloudpickle = joblib_backend == "multiprocessing"
        context: multiprocessing.context.BaseContext | None = None
        if joblib_backend == "loky":
            context = _loky_context(mp_context)
        elif joblib_backend == "multiprocessing":
            context = resolve_mp_context(mp_context)
        else:
            if mp_context is not None:
                raise ValueError(
                    "mp_context does not apply to joblib_backend='threading'"
                )
            # One class, three kinds of workers: threads share the caller's
            # memory, so the process items of the contract do not apply.
            self.capabilities = Capabilities(process_isolation=False)  # type: ignore[misc]
        super().__init__(max_workers=workers, cloudpickle=cloudpickle)
        self._joblib_backend = joblib_backend
        self._temp_manager: Any = None
        self._own_context: str | None = None
        self._mp_pool: Any = None
        self._threads: futures.ThreadPoolExecutor | None = None
        self._loky: _LokyPool | None = None
        self._manager_thread: threading.Thread | None = None
        self._mp: _MpLauncher | None = None
        self._mp_released = False
        limit = _HANDED_OVER_PER_WORKER * workers + 1
        if joblib_backend == "loky":
            assert context is not None
            self._start_loky(
                workers,
                context,
                initializer,
                initargs,
                idle,
                nbytes,
                mmap_mode,
                temp_folder,
                inner_max_num_threads,
            )
            assert self._loky is not None
            # The pool's own method, not one of ours: the feeder must not hold
            # the executor, or executor and feeder form a cycle that keeps the
            # pool (and its pipes) alive until the garbage collector runs.
            launch: Callable[[Any], Any] = self._loky.submit
        elif joblib_backend == "threading":
            self._threads = futures.ThreadPoolExecutor(
                workers,
                thread_name_prefix="executors-joblib",
                initializer=initializer,
                initargs=initargs,
            )
            launch = self._threads.submit
        else:
            assert context is not None
            self._start_mp_pool(
                workers,
                context,
                initializer,
                initargs,
                per_child,
                nbytes,
                mmap_mode,
                temp_folder,
            )
            assert self._mp is not None
            launch = self._mp.launch
        self._feeder = _Feeder(launch, limit)
        _live_executors.add(self)

    # -- pool construction ---------------------------------------------------

    def _start_loky(
        self,
        workers: int,
        context: multiprocessing.context.BaseContext,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        idle: float | None,
        nbytes: int | None,
        mmap_mode: str | None,
        temp_folder: str | None,
        inner_max_num_threads: int | None,
    ) -> None:
        from joblib._memmapping_reducer import (
            TemporaryResourcesManager,
            get_memmapping_reducers,
        )

        # The folder context of plain submits; each Parallel call registers
        # its own, as on joblib's executor.
        self._own_context = uuid.uuid4().hex
        manager = TemporaryResourcesManager(temp_folder, context_id=self._own_context)
        self._temp_manager = manager
        job_reducers: dict[Any, Any] | None = None
        result_reducers: dict[Any, Any] | None = None
        if nbytes is not None:
            job_reducers, result_reducers = get_memmapping_reducers(
                temp_folder_resolver=manager.resolve_temp_folder_name,
                max_nbytes=nbytes,
                mmap_mode=mmap_mode,
                unlink_on_gc_collect=True,
            )
        pool = _LokyPool(
            max_workers=workers,
            job_reducers=job_reducers,
            result_reducers=result_reducers,
            timeout=idle,
            context=context,
            initializer=_Initializer(
                None if initializer is None else portable(initializer),
                initargs,
                os.getpid(),
            ),
            env=_thread_limits(workers, inner_max_num_threads),
        )
        pool._temp_folder_manager = manager
        self._loky = pool

    def _start_mp_pool(
        self,
        workers: int,
        context: multiprocessing.context.BaseContext,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        per_child: int | None,
        nbytes: int | None,
        mmap_mode: str | None,
        temp_folder: str | None,
    ) -> None:
        from joblib.pool import MemmappingPool

        extra: dict[str, Any] = {}
        if per_child is not None:
            extra["maxtasksperchild"] = per_child
        pool = MemmappingPool(
            workers,
            temp_folder=temp_folder,
            max_nbytes=nbytes,
            mmap_mode=mmap_mode,
            initializer=_Initializer(
                None if initializer is None else portable(initializer),
                initargs,
                os.getpid(),
            ),
            context=context,
            **extra,
        )
        self._mp_pool = pool
        self._temp_manager = pool._temp_folder_manager
        self._own_context = uuid.uuid4().hex
        self._temp_manager.set_current_context(self._own_context)
        self._mp = _MpLauncher(pool)
        self._watcher = _PoolWatcher(pool, self._mp.broke)
        self._watcher.start()

    def _set_own_context(self) -> None:
        self._temp_manager.set_current_context(self._own_context)

    # -- BaseExecutor hooks --------------------------------------------------

    def _broken_error(self) -> BaseException | None:
        broken = self._feeder.broken
        if broken is None and self._mp is not None:
            # A worker may have died while no task was with the pool.
            broken = self._mp.broken
        return None if broken is None else translate_error(broken)

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        before = self._set_own_context if self._temp_manager is not None else None
        return self._feeder.submit(_Task(fn, args, kwargs, before))

    def _submit_internal(self, batch: Any) -> Future[Any]:
        # Batches of a running Parallel call: no shutdown guard, so that a
        # map started before shutdown() completes (shutdown waits for it).
        # (A loky batch then points the memmapping reducer at its call's own
        # folder while it is pickled.)
        before = self._set_own_context if self._temp_manager is not None else None
        return self._feeder.submit(_Task(batch, (), {}, before))

    def _attach_parallel(self, backend: Any, parallel: Any) -> None:
        if self._temp_manager is not None:
            self._temp_manager.register_new_context(parallel._id)
        backend._workers = self._loky

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self._feeder.close(cancel_futures, self._stop_workers_nowait)
        if not wait:
            return
        self._feeder.wait_idle()
        self._stop_workers(wait=True)
        _live_executors.discard(self)

    def _stop_workers_nowait(self) -> None:
        self._stop_workers(wait=False)

    def _interrupt(self) -> None:
        # Ctrl-C in a with block: drop the queue and stop what runs, so that
        # the shutdown(wait=True) that follows returns at once.
        self._feeder.close(True, self._stop_workers_nowait)
        if self._loky is not None:
            # loky kills the workers and fails their tasks with its
            # ShutdownExecutorError ("... shutdown with kill_workers=True").
            self._loky.shutdown(wait=False, kill_workers=True)
        if self._mp is not None and not self._mp_released:
            self._watcher.stop()
            self._mp.stop(
                lambda: RuntimeError("the task was stopped by KeyboardInterrupt")
            )
        if self._threads is not None:
            # Threads cannot be stopped; their queue can.
            self._threads.shutdown(wait=False, cancel_futures=True)

    def _stop_workers(self, wait: bool) -> None:
        if self._loky is not None:
            # Remember loky's manager thread: after shutdown(wait=False) loky
            # forgets it, and a later shutdown(wait=True) must still be able
            # to wait for the workers to exit.
            thread = getattr(self._loky, "_executor_manager_thread", None)
            if thread is not None:
                self._manager_thread = thread
            self._loky.shutdown(wait=wait)
            thread = self._manager_thread
            # A done-callback runs in that thread; it cannot wait for itself.
            if wait and thread is not None and thread is not threading.current_thread():
                thread.join()
                # It holds loky's call queue, whose pipe would stay open for
                # as long as this (shut down) executor lives.
                self._manager_thread = None
            if wait and self._temp_manager is not None:
                self._temp_manager._clean_temporary_resources(
                    force=False, allow_non_empty=True
                )
        if self._threads is not None:
            self._threads.shutdown(wait=wait)
        if self._mp_pool is not None and not self._mp_released:
            self._watcher.stop()
            if self._broken_error() is None:
                # close(): workers exit once the queued work is done.
                with contextlib.suppress(ValueError):
                    self._mp_pool.close()
            if wait and threading.current_thread() is not self._mp_pool._result_handler:
                self._watcher.join()
                self._mp_pool.join()
                # Runs the pool's finalizer now and removes its memmapping
                # folder (MemmappingPool.terminate).
                self._mp_pool.terminate()
                _close_pipes(self._mp_pool)
                # Once: join() on the closed worker processes would raise.
                self._mp_released = True

    # -- map --------------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[T]:
        """Ordered parallel map; see :meth:`executors.Executor.map`.

        With ``map_engine="parallel"`` this runs through
        ``joblib.Parallel(return_as="generator")`` unless ``timeout`` or
        ``buffersize`` is given or there is one worker (see the module
        docstring); ``chunksize`` then becomes ``Parallel``'s ``batch_size``.
        """
        return self._joblib_map(
            fn, iterables, True, timeout, chunksize, buffersize, progress
        )

    def map_unordered(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[T]:
        """Results as they complete; see :meth:`executors.Executor.map_unordered`.

        With ``map_engine="parallel"`` this runs through
        ``joblib.Parallel(return_as="generator_unordered")`` on the same terms
        as :meth:`map`.
        """
        return self._joblib_map(
            fn, iterables, False, timeout, chunksize, buffersize, progress
        )

    def _joblib_map(
        self,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
        timeout: float | None,
        chunksize: int | None,
        buffersize: int | None,
        progress: bool,
    ) -> Iterator[T]:
        timeout, chunksize, buffersize = check_map_arguments(
            fn, timeout, chunksize, buffersize
        )
        if (
            self._map_engine == "shared"
            or timeout is not None
            or buffersize is not None
            or self._max_workers < 2
        ):
            shared = super().map if ordered else super().map_unordered
            return shared(
                fn,
                *iterables,
                timeout=timeout,
                chunksize=chunksize,
                buffersize=buffersize,
                progress=progress,
            )
        with self._lock:
            self._check_open()
        # Eager, as the contract wants without buffersize: the whole input is
        # read now; Parallel dispatches it as batches complete.
        items = list(zip(*iterables, strict=False))
        bar = _progress_bar(len(items)) if progress else None
        try:
            guarded = _Guarded(self._prepare(fn))
            if self._joblib_backend == "loky":
                backend: Any = _LokyOnOwnWorkers(self, bar)
            elif self._joblib_backend == "threading":
                backend = _ThreadsOnOwnWorkers(self, bar)
            else:
                backend = _MpOnOwnWorkers(self, bar)
            parallel = joblib.Parallel(
                n_jobs=self._max_workers,
                backend=backend,
                return_as="generator" if ordered else "generator_unordered",
                batch_size=self._batch_size if chunksize is None else chunksize,
                pre_dispatch=self._pre_dispatch,
            )
            outputs = parallel((guarded, args, {}) for args in items)
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        return _stream(_ParallelResults(outputs, bar))


# -- option checks ------------------------------------------------------------------


def _check_batch_size(value: object) -> int | str:
    if value == "auto":
        return "auto"
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"batch_size must be 'auto' or an int, got {value!r}")
    if value < 1:
        raise ValueError(f"batch_size must be 'auto' or >= 1, got {value!r}")
    return value


def _check_pre_dispatch(value: object, workers: int) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"pre_dispatch must be an int or an expression such as '2 * n_jobs', "
            f"got {value!r}"
        )
    if value == "all":
        return value
    amount: object = value
    if isinstance(value, str):
        try:
            amount = eval_expr(value.replace("n_jobs", str(workers)))
        except ValueError as exc:
            raise ValueError(f"pre_dispatch {value!r} is not valid: {exc}") from None
    if not isinstance(amount, (int, float)) or int(amount) < 1:
        raise ValueError(f"pre_dispatch must amount to at least 1 item, got {value!r}")
    return value


def _check_max_nbytes(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return int(memstr_to_bytes(value))
        except (ValueError, IndexError):
            raise ValueError(
                f"max_nbytes must be bytes (int) or a size such as '1M', got {value!r}"
            ) from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(
            f"max_nbytes must be an int, a size such as '1M' or None, got {value!r}"
        )
    if value < 0:
        raise ValueError(f"max_nbytes must be >= 0, got {value!r}")
    return value
