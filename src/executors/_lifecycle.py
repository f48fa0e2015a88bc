"""The lives of executors and of the threads that run them.

* **One interpreter-exit hook.** When the main thread finishes (before
  ``atexit`` hooks, where the stdlib pools finish their own work), the hook
  marks the interpreter as exiting, so a later ``submit`` raises, then asks
  every live executor to finish the work already submitted and close, and
  last waits for the done-callbacks of what finished. An executor takes
  part with :func:`close_at_exit`.
* **Manager threads.** :class:`ManagerThread` is the loop a backend runs
  beside its library (reading results, watching workers); if the loop ever
  raises, every future it owns fails instead of hanging.
* **Executors dropped without** ``shutdown()``. :func:`close_when_collected`
  runs a backend's closing step on one reaper thread once the executor is
  garbage-collected; the work already submitted still runs and interpreter
  exit still waits for it, as with the stdlib pools.
* **Steps that must not run where they were triggered.**
  :func:`run_released` runs a step (a call queue's "idle, let the workers
  go") on the same reaper thread: the thread that triggered it may be a
  library's own, holding that library's locks (the stdlib process pool's
  manager thread fails futures inside its shutdown lock on 3.12+, so a
  done-callback that calls back into the pool's ``shutdown()`` waits for
  itself).
* :func:`killing_after_grace`: workers told to stop by SIGTERM (Ctrl-C,
  ``terminate_workers()``) get SIGKILL if they are still there after a
  grace; a task may ignore SIGTERM, and the wait for them must end.
* :func:`join_unless_current`: a thread cannot join itself, and a
  ``shutdown(wait=True)`` from a done-callback runs in the very thread it
  would wait for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from ._futures import drain_callbacks

__all__ = [
    "ManagerThread",
    "close_at_exit",
    "close_when_collected",
    "ending_on_keyboard_interrupt",
    "ensure_exit_hook_last",
    "interpreter_exiting",
    "join_unless_current",
    "run_released",
    "shutdown_from_own_task_error",
]

_log = logging.getLogger("executors")

# Bound on waiting for done-callbacks at exit: a callback that never returns
# must not keep the interpreter alive for good.
EXIT_CALLBACKS_SECONDS = 5.0


class ClosesAtExit(Protocol):
    def close_at_exit(self) -> None:
        """Finish the submitted work and release the workers (may block)."""


_exiting = False
_live: weakref.WeakSet[Any] = weakref.WeakSet()
# Reentrant: a finalizer that closes an executor may run (at a garbage
# collection) while this thread holds it.
_hook_lock = threading.RLock()


def interpreter_exiting() -> bool:
    """True once the main thread has finished: no new work is accepted."""
    return _exiting


def close_at_exit(owner: ClosesAtExit) -> None:
    """Have ``owner.close_at_exit()`` called when the interpreter exits.

    Held weakly: an executor that is garbage-collected is forgotten.
    """
    _live.add(owner)
    ensure_exit_hook_last()


def _python_exit() -> None:
    global _exiting
    with _hook_lock:
        if _exiting:
            return  # registered more than once (see ensure_exit_hook_last)
        _exiting = True
    _run_released()
    _run_collected()
    for owner in list(_live):
        try:
            owner.close_at_exit()
        except Exception:  # pragma: no cover - a backend bug; exit anyway
            _log.exception("executors: %r failed to close at exit", owner)
    drain_callbacks(EXIT_CALLBACKS_SECONDS)


# The entry threading._register_atexit appended for our hook, last time.
_registered_entry: object = None


def ensure_exit_hook_last() -> None:
    """Make the exit hook run before every other interpreter-exit hook.

    Hooks registered with ``threading._register_atexit`` run last-in first
    out, and the stdlib's process pool and loky register theirs when they
    are first imported or started, after ours: from then on they would
    refuse the queued work our executors still hand over. Call this after a
    library may have registered a hook; re-registering is cheap and the hook
    runs once.
    """
    register = getattr(threading, "_register_atexit", None)
    hooks = getattr(threading, "_threading_atexits", None)
    if register is None or hooks is None:  # pragma: no cover - not CPython
        return
    global _registered_entry
    with _hook_lock:
        # threading stores a wrapper of the hook (a partial up to 3.12, a
        # lambda from 3.13), not the hook: compare with the entry our last
        # registration appended, or every call would append one more.
        if _exiting or (hooks and hooks[-1] is _registered_entry):
            return
        # RuntimeError: the interpreter is already shutting down.
        with contextlib.suppress(RuntimeError):
            register(_python_exit)
            _registered_entry = hooks[-1]


def _after_fork_in_child() -> None:
    global _hook_lock
    # A forked child (a fork-context worker too) runs the hook when it
    # exits; the parent's executors are none of its business. The lock may
    # have been held by another thread at the fork: a fresh one, or the
    # child would hang at its own exit.
    _live.clear()
    _hook_lock = threading.RLock()
    _forget_collected()


# Closing steps of collected executors. A finalizer may run in any thread at
# any allocation, maybe while that thread holds a lock the step needs, so it
# only queues the step (SimpleQueue.put is safe there) and wakes the reaper.
# Steps are taken off `_collected` only under `_reaping`, so the exit hook,
# which runs the ones left under the same lock, never misses one the reaper
# has taken but not run yet.
_collected: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
_reaper_wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()
_reaping = threading.Lock()
_reaper: threading.Thread | None = None
_reaper_start_lock = threading.Lock()


def close_when_collected(
    owner: object, close: Callable[[], object]
) -> weakref.finalize[..., object]:
    """Call ``close()`` once ``owner`` is garbage-collected.

    For an executor dropped without ``shutdown()``: ``close`` typically
    closes its call queue (the queued work still runs) and registers with
    :func:`close_at_exit` whatever finishes that work, so that interpreter
    exit still waits for it. ``close`` must not hold ``owner``. It runs on
    the reaper thread, never inside the finalizer; the exit hook runs any
    the reaper has not come to. Not in a forked child, which may have
    inherited a lock held.

    Returns:
        The finalizer: ``detach()`` it once ``owner`` has closed for good,
        so that collecting it costs no wake-up of the reaper.
    """
    # Started here, not in the finalizer; not alive after a fork.
    _ensure_reaper()
    finalizer = weakref.finalize(owner, _on_collected, os.getpid(), close)
    finalizer.atexit = False
    return finalizer


def _on_collected(pid: int, close: Callable[[], object]) -> None:
    if os.getpid() == pid:
        _collected.put(close)
        _reaper_wakeups.put(None)


def _ensure_reaper() -> bool:
    """Start the reaper thread if it is not running; False if it cannot start."""
    global _reaper
    with _reaper_start_lock:
        if _reaper is None or not _reaper.is_alive():
            reaper = threading.Thread(
                target=_reap, name="executors-reaper", daemon=True
            )
            try:
                reaper.start()
            except RuntimeError:
                # The interpreter is finalizing (3.12+ refuses new threads
                # then); whatever asked must do without it.
                return False
            _reaper = reaper
    return True


def _reap() -> None:
    while True:
        _reaper_wakeups.get()
        _run_released()
        _run_collected()


# Steps handed over by run_released(), run by the reaper outside `_reaping`:
# a closing step of a collected executor (run under it) may wait for one.
_released: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()


def run_released(step: Callable[[], object]) -> None:
    """Run ``step`` soon on the reaper thread, a thread of the core's own.

    For a step that may block or take a library's locks (release a pool,
    stop a listener) when the thread that triggered it may be a library's
    own, running our done-callback with its locks held: in that thread the
    step could wait for itself. The reaper holds no lock while it runs
    steps. From the reaper itself, or when no thread can start any more
    (interpreter finalization), the step runs at once. The interpreter-exit
    hook runs the steps still waiting.
    """
    if threading.current_thread() is _reaper or not _ensure_reaper():
        _run_step(step)
        return
    _released.put(step)
    _reaper_wakeups.put(None)


def _run_released() -> None:
    while True:
        try:
            step = _released.get_nowait()
        except queue.Empty:
            return
        _run_step(step)
        del step


def _run_step(step: Callable[[], object]) -> None:
    try:
        step()
    except Exception:  # pragma: no cover - a backend bug
        _log.exception("executors: releasing an executor's workers failed")


def _run_collected() -> None:
    with _reaping:
        while True:
            try:
                close = _collected.get_nowait()
            except queue.Empty:
                return
            try:
                close()
            except Exception:  # pragma: no cover - a backend bug
                _log.exception("executors: closing a collected executor failed")
            del close


def _forget_collected() -> None:
    global _collected, _released, _reaper_wakeups, _reaping, _reaper
    _collected = queue.SimpleQueue()
    _released = queue.SimpleQueue()
    _reaper_wakeups = queue.SimpleQueue()
    _reaping = threading.Lock()
    _reaper = None


def ending_on_keyboard_interrupt() -> bool:
    """Whether the interpreter is exiting because of an unhandled Ctrl-C.

    Python prints an unhandled exception, storing it as ``sys.last_exc``
    (``sys.last_value`` before 3.12), before it runs the interpreter-exit
    hooks. In an interactive session it holds the last error shown.
    """
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)


ensure_exit_hook_last()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


#: How long workers told to stop by SIGTERM get before SIGKILL.
TERMINATE_GRACE_SECONDS = 3.0


@contextlib.contextmanager
def killing_after_grace(
    signal_workers: Callable[[signal.Signals], None],
) -> Iterator[None]:
    """Send SIGKILL through ``signal_workers`` if the block outlasts the grace.

    Around the wait for workers that were sent SIGTERM: a task that
    installed its own handler, or blocked the signal, would keep that
    wait (and the caller's ``terminate_workers()`` or Ctrl-C) forever.
    """
    timer = threading.Timer(TERMINATE_GRACE_SECONDS, signal_workers, (signal.SIGKILL,))
    timer.name = "executors-terminate-grace"
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        join_unless_current(timer)


def join_unless_current(
    thread: threading.Thread | None, timeout: float | None = None
) -> None:
    """Join ``thread`` unless it is the calling thread (or never started)."""
    if thread is None or thread is threading.current_thread():
        return
    if thread.ident is None:
        return
    thread.join(timeout)


def shutdown_from_own_task_error() -> RuntimeError:
    """What ``shutdown(wait=True)`` raises when a task of the executor calls it.

    On a backend whose tasks run in the executor's own threads, the task
    would wait for its own end. The stdlib's thread pool raises here too
    ("cannot join current thread"); the shutdown itself stands.
    """
    return RuntimeError(
        "shutdown(wait=True) was called from a task of this executor, which "
        "would wait for itself; the executor is shutting down, use "
        "shutdown(wait=False) from its tasks"
    )


class ManagerThread(threading.Thread):
    """A backend's management loop, that fails its futures if it dies.

    Subclasses implement :meth:`loop`; when it returns the thread ends. If it
    raises anything, :meth:`on_failure` runs with the error (a backend breaks
    its call queue there), so an unexpected bug fails every future at once
    instead of leaving them pending for good.

    Args:
        name: The thread's name, ``executors-<backend>-<role>``.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)

    def run(self) -> None:
        try:
            self.loop()
        except BaseException as exc:
            _log.exception("executors: the thread %s failed", self.name)
            self.on_failure(exc)

    def loop(self) -> None:
        """The thread's work; returns when the executor has closed."""
        raise NotImplementedError

    def on_failure(self, error: BaseException) -> None:
        """Called in this thread if :meth:`loop` raised ``error``."""


def manager_failed(
    backend: str, role: str, error: BaseException
) -> Callable[[], BaseException]:
    """The error every future gets when a backend's own thread failed."""
    from ._errors import ExecutorFailedError

    def make() -> BaseException:
        exc = ExecutorFailedError(
            f"the {role} thread of the {backend!r} executor failed "
            f"({type(error).__qualname__}: {error}); the executor is broken"
        )
        exc.__cause__ = error
        return exc

    return make
