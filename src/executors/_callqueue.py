"""The queue of futures in front of a library: :class:`CallQueue`.

A library that runs calls (``multiprocessing.Pool``, loky, Dask, a plugin's
engine) gets work from the executor through a call queue, never directly::

    submit(fn, *args) ──▶ CallQueue ── cancellable, unbounded ───────────┐
                            │ at most `window` calls launched and not    │
                            │ yet settled; a queued future still cancels │
                            ▼                                            │
                          launch(call)  ──▶ the library runs it          │
                                              │                          │
    future.result() ◀── settle(call, ...) ◀───┘ (any thread)  launch next┘

* **Only a small window is handed over**, so ``cancel()`` of a queued
  future really cancels: the library never saw it. A future turns
  *running* when its call is launched.
* **Futures are settled outside every lock**, through
  :func:`executors._futures.settle`: a done-callback may submit to the same
  executor, or wait on another of its futures, without deadlocking it.
* **Broken is one state.** :meth:`CallQueue.break_` fails every unsettled
  future at once with a fresh error each and refuses new calls with it;
  :meth:`CallQueue.broken_error` is what ``submit`` raises from then on.
* **Closing** lets the queued calls run (or cancels them); ``on_idle`` runs
  once the queue has closed and every call has settled, which is when a
  backend may release its workers. It runs in the thread that closed the
  queue (the caller's ``shutdown()``) if that thread finds it idle, and
  otherwise on the core's reaper thread, never in the thread that settled
  the last call: that may be a library's own thread running our
  done-callback with the library's locks held, where releasing the
  library's pool would wait for itself (the stdlib process pool on 3.13).
  :meth:`CallQueue.wait_idle` on a closed queue returns once it has run.

A backend's whole job is then ``launch`` (hand one call to the library,
remember the library's handle in ``call.handle``) and calling
:meth:`CallQueue.settle` when the library reports the outcome.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ._call import Call, Window
from ._callbridge import LibraryBridge
from ._callcontrol import TaskControl
from ._control import record_attempts, submitting_options, timer
from ._futures import fail_futures, notify_cancelled, settle
from ._lifecycle import ensure_exit_hook_last, run_released

__all__ = ["Call", "CallQueue"]

_log = logging.getLogger("executors")


class CallQueue(LibraryBridge, TaskControl):
    """Hands calls to a library a few at a time; settles their futures.

    A backend sets ``shm_threshold`` (see :func:`executors._outcome.dumps`)
    when its workers take large buffers through shared memory.

    Args:
        launch: Hands one call to the library; called outside the queue's
            lock, in the thread that submitted or settled last. May settle
            the call itself. If it raises, that call's future fails with
            the exception (``translate`` applied) and the queue goes on.
        window: Most calls launched and not yet settled: a number, or a
            callable read before each launch (a cluster that grows).
        chunk_window: The same for chunks of a ``map``; default ``window``.
        on_idle: Called once, outside the lock, when the queue is closed
            and nothing is queued or launched any more: in :meth:`close`
            if the queue is idle then (or the closing thread settles the
            last call), else on the core's reaper thread (see
            :func:`executors._lifecycle.run_released`). It may block and
            call the library's ``shutdown``.
        translate: Turns an exception from ``launch`` into the one the
            future gets (a library's error into ours); default: as is.
        stop: Stops one launched call's task (kills its worker) and returns
            True, or returns False where the library cannot; used at a
            timeout and by ``kill_task``. Default: cannot.
        retries_crashes: A :class:`~executors.WorkerCrashedError` earns a
            retry when the task has retries left (the backend survives
            worker death).
        slots: How many calls the library runs at once (its workers). A
            call with a timeout is launched only while fewer calls than
            that are launched, so that it starts at once and its clock
            measures its run, not its wait in the library's own queue.
            Default: ``window``.
        room: ``room(call, queued)``, read under the queue's lock before
            each launch besides the window: whether the library can take
            this call now (a pool that places each call on a worker);
            ``queued`` is how many calls wait, for a pool that starts
            workers on demand. Must not call back into the queue.
        run_left: ``run_left(call, timeout)`` at a call's deadline: the
            seconds its task may still run, for a library that knows when
            a task really started (``None``: it has returned, let it be).
            The deadline moves by that much; default: the timeout counts
            from the launch.
    """

    def __init__(
        self,
        launch: Callable[[Call], object],
        window: Window,
        *,
        chunk_window: Window | None = None,
        on_idle: Callable[[], object] | None = None,
        translate: Callable[[BaseException], BaseException] | None = None,
        stop: Callable[[Call], bool] | None = None,
        retries_crashes: bool = False,
        slots: Window | None = None,
        room: Callable[[Call, int], bool] | None = None,
        run_left: Callable[[Call, float], float | None] | None = None,
    ) -> None:
        self._room = room
        self._run_left = run_left
        self.shm_threshold: int | None = None
        self._slots = window if slots is None else slots
        self._launch = launch
        self._stop = stop
        self._retries_crashes = retries_crashes
        # Calls waiting out a retry delay, with their timer entries: neither
        # queued nor launched, but running (kill_task stops them, a break
        # or fail_launched fails them), and the queue is not idle.
        self._waiting: dict[Call, Any] = {}
        # Settled with a retry, not yet waiting or requeued.
        self._delayed = 0
        self._window = window
        self._chunk_window = window if chunk_window is None else chunk_window
        self._on_idle = on_idle
        self._translate = translate
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queued: deque[Call] = deque()
        self._launched: set[Call] = set()
        self._closing = False
        #: Set by :meth:`close` with ``ending=True``: the workers are being
        #: stopped (terminate_workers, kill_workers), so ``on_idle`` must not
        #: release them gracefully; the executor tears them down itself.
        self.ending = False
        # The thread that closed the queue last: on_idle may run in it.
        self._closer: threading.Thread | None = None
        self._idle_notified = False
        # on_idle has returned (or there is none): a closed queue is idle
        # for wait_idle() only then.
        self._released = on_idle is None
        self._broken: Callable[[], BaseException] | None = None
        # Set while a thread is inside _pump: a call that settles inside
        # launch() would otherwise recurse once per queued call.
        self._pumping = threading.local()
        self._hooked = False

    # -- submitting ----------------------------------------------------------

    def submit(self, future: Future[Any], payload: Any, *, chunk: bool = False) -> Call:
        """Queue a call; launch it now if the window has room.

        The task options in force for this submission (see
        :func:`executors._control.submitting`) travel with the call.
        """
        options = submitting_options()
        if options is not None and options.is_default:
            options = None
        call = Call(future, payload, chunk, options)
        with self._lock:
            broken = self._broken
            if broken is None:
                self._queued.append(call)
                # The common case, in the same lock: a free slot takes it.
                first = self._take_locked()
        if broken is not None:
            # Broken between the executor's check and now.
            call.payload = None
            fail_futures([future], broken)
            return call
        if first is not None:
            self._launch_one(first)
        if self._queued:
            self._pump()
        return call

    def _limit(self, call: Call) -> int:
        window = self._chunk_window if call.chunk else self._window
        if call.options is not None and call.options.timeout is not None:
            window = self._slots
        return window() if callable(window) else window

    def _take_locked(self) -> Call | None:
        """The next call to launch, marked launched; None if none may go."""
        queued = self._queued
        while queued and self._broken is None:
            call = queued[0]
            if len(self._launched) >= self._limit(call):
                return None
            if self._room is not None and not self._room(call, len(queued)):
                return None
            queued.popleft()
            # A retry's future is running already.
            if not call.attempts and not call.future.set_running_or_notify_cancel():
                call.payload = None  # cancelled while queued
                continue
            self._launched.add(call)
            call.attempts += 1
            if call.options is not None and call.options.timeout is not None:
                timeout = call.options.timeout
                call.deadline = timer.call_later(
                    timeout, functools.partial(self._expire, call, timeout)
                )
            return call
        return None

    def _launch_one(self, call: Call) -> None:
        pumping = self._pumping
        outer = getattr(pumping, "active", False)
        pumping.active = True
        try:
            self._launch(call)
        except BaseException as exc:
            error = exc if self._translate is None else self._translate(exc)
            self.settle(call, error=error)
            if not isinstance(exc, Exception):
                # Ctrl-C (or a SystemExit) in the submitting thread as it
                # launched: the call has failed with it, and the caller
                # must see it too, not a submit that returned normally.
                raise
        finally:
            pumping.active = outer
        if not self._hooked:
            # The library may have registered its own exit hook on its
            # first launch (loky does): ours must run first.
            self._hooked = True
            ensure_exit_hook_last()

    def pump(self) -> None:
        """Launch what the window allows now.

        For a window that grows (a cluster that gains workers): the queue
        itself looks for room only when a call is submitted or settles.
        """
        self._pump()

    def _pump(self, check_idle: bool = True) -> None:
        # A call that settles inside launch() calls back in here: the outer
        # loop launches what follows instead of recursing once per call.
        if getattr(self._pumping, "active", False):
            return
        while True:
            with self._lock:
                call = self._take_locked()
            if call is None:
                break
            self._launch_one(call)
        if check_idle:
            self._check_idle()

    # -- settling ------------------------------------------------------------

    def settle(
        self,
        call: Call,
        value: Any = None,
        error: BaseException | None = None,
        *,
        retry: bool = True,
        release: bool = True,
    ) -> bool:
        """Report a launched call's outcome; launch the next call.

        Safe from any thread, and nothing the future's callbacks do reaches
        the caller. A failure the task's options allow to retry launches
        the call again instead (after ``retry_delay``), unless ``retry`` is
        False (a task stopped on purpose). ``release=False`` keeps the
        payload for a library that still holds the call (an abandoned task).
        Returns False if the call was no longer launched (the queue broke, or
        the task was already failed at its timeout).
        """
        nxt = None
        with self._lock:
            entry = self._waiting.pop(call, None)
        if entry is not None:
            # kill_task() of a call waiting out its retry delay.
            entry.cancel()
            call.payload = None
            settle(call.future, value, error)
            self._check_idle()
            return True
        with self._lock:
            mine = call in self._launched
            if mine:
                self._launched.discard(call)
                retry = retry and error is not None and self._retryable(call, error)
                if retry:
                    self._delayed += 1
                elif self._queued and not getattr(self._pumping, "active", False):
                    # (Inside a launch in this thread, the launching loop
                    # takes the next call: no recursion per call.)
                    nxt = self._take_locked()
        if not mine:
            return False
        if call.deadline is not None:
            call.deadline.cancel()
            call.deadline = None
        if retry:
            self._retry(call)
            return True
        # Launch the next call before settling: the worker that just freed
        # up gets work while the caller wakes.
        if nxt is not None:
            self._launch_one(nxt)
        if self._queued:
            self._pump(check_idle=False)
        if release:
            call.payload = call.handle = None
        if error is not None and call.attempts > 1:
            record_attempts(error, call.attempts)
        settle(call.future, value, error)
        # Only now: on_idle may release the workers and end a shutdown(),
        # which must find every future settled.
        self._check_idle()
        return True

    # -- closing and breaking ---------------------------------------------------

    def close(self, cancel_futures: bool = False, *, ending: bool = False) -> None:
        """Accept no more calls; cancel the queued ones if asked.

        Calls already queued still launch unless cancelled; ``on_idle``
        runs once everything has settled. ``ending``: the workers are being
        stopped; ``on_idle`` reads :attr:`ending`.
        """
        with self._lock:
            self._closing = True
            self.ending = self.ending or ending
            self._closer = threading.current_thread()
            dropped = list(self._queued) if cancel_futures else []
            if cancel_futures:
                self._queued.clear()
        for call in dropped:
            call.payload = None
            call.future.cancel()
        # Nothing dequeues these any more; wake wait() and as_completed().
        notify_cancelled(call.future for call in dropped)
        self._pump()

    def break_(self, make_error: Callable[[], BaseException]) -> list[Call]:
        """Fail every unsettled future, launched or queued; refuse new calls.

        The first break wins; later ones do nothing.

        Args:
            make_error: Builds each future's exception (one per future).

        Returns:
            The calls that were launched (the library may still hold them).
        """
        with self._lock:
            if self._broken is not None:
                return []
            self._broken = make_error
            launched = list(self._launched)
            queued = list(self._queued) + self._take_waiting_locked()
            self._launched.clear()
            self._queued.clear()
        for call in launched:
            if call.deadline is not None:
                call.deadline.cancel()
        for call in queued:
            call.payload = None
        fail_futures((call.future for call in launched + queued), make_error)
        # Queued futures cancelled by their owner are never dequeued now.
        notify_cancelled(call.future for call in queued)
        self._check_idle()
        return launched

    def fail_launched(self, make_error: Callable[[], BaseException]) -> None:
        """Fail every launched call now, without retries (workers stopped)."""
        with self._lock:
            launched = list(self._launched)
            self._launched.clear()
            waiting = self._take_waiting_locked()
        for call in launched:
            if call.deadline is not None:
                call.deadline.cancel()
            # The library may still hold the call (and read its payload):
            # only its future is finished here.
            settle(call.future, error=make_error())
        for call in waiting:
            call.payload = None
            settle(call.future, error=make_error())
        self._check_idle()

    def broken_error(self) -> BaseException | None:
        """The exception ``submit`` raises once broken, else ``None``."""
        broken = self._broken
        return None if broken is None else broken()

    @property
    def is_broken(self) -> bool:
        return self._broken is not None

    @property
    def closing(self) -> bool:
        return self._closing

    # -- looking ---------------------------------------------------------------

    def launched(self) -> list[Call]:
        """The calls with the library now (a snapshot)."""
        with self._lock:
            return list(self._launched)

    def is_idle(self) -> bool:
        """True when nothing is queued, launched or waiting to be retried."""
        with self._lock:
            return self._is_idle_locked()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the queue is idle (see :meth:`is_idle`); False on timeout.

        On a closed queue, until ``on_idle`` has run too.
        """
        with self._idle:
            return self._idle.wait_for(self._waited_idle_locked, timeout)

    def _waited_idle_locked(self) -> bool:
        if not self._is_idle_locked():
            return False
        return self._released or not self._closing

    def _is_idle_locked(self) -> bool:
        return (
            not self._queued
            and not self._launched
            and not self._delayed
            and not self._waiting
        )

    def _idle_now_locked(self) -> bool:
        if not self._is_idle_locked():
            return False
        if self._idle._waiters:  # type: ignore[attr-defined]
            self._idle.notify_all()
        return True

    def _check_idle(self) -> None:
        # Without the lock first: with no one waiting and no close pending,
        # nothing would happen (a waiter registers under the lock before it
        # sleeps, so a change made under the lock is seen by it or here).
        if not self._closing and not self._idle._waiters:  # type: ignore[attr-defined]
            return
        with self._lock:
            if not self._idle_now_locked():
                return
            run_hook = self._closing and not self._idle_notified
            if run_hook:
                self._idle_notified = True
            closer = self._closer
        if not run_hook or self._on_idle is None:
            return
        if threading.current_thread() is closer:
            self._run_on_idle()
        else:
            # Maybe a library's thread, inside the library's locks.
            run_released(self._run_on_idle)

    def _run_on_idle(self) -> None:
        on_idle = self._on_idle
        try:
            if on_idle is not None:
                on_idle()
        finally:
            with self._lock:
                self._released = True
                self._idle.notify_all()
