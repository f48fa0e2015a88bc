"""Task functions for the conformance suite.

They live in an importable module (not in test files) so that workers
started with spawn or forkserver can unpickle them by reference.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from typing import Any

_init_value: Any = None


def identity(x: Any) -> Any:
    return x


def add(a: Any, b: Any = 0) -> Any:
    return a + b


def echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def noop(x: Any = None) -> None:
    return None


def sleep_and_return(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def wait_for_path(path: str, value: Any = None, bound: float = 15.0) -> Any:
    """Return ``value`` once ``path`` exists: a task the test releases.

    The test creates the file when it is done with the task running, instead
    of guessing how long to keep it busy. ``bound`` keeps a test that never
    releases it bounded all the same.
    """
    deadline = time.monotonic() + bound
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def raise_value_error(message: str = "boom") -> None:
    raise ValueError(message, 42)


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


class CustomError(Exception):
    """An exception type defined outside the stdlib."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def raise_custom(code: int) -> None:
    raise CustomError(code, "custom failure")


def get_pid(_: Any = None) -> int:
    return os.getpid()


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def exit_abruptly(code: int = 3) -> None:
    os._exit(code)


def kill_self(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(10)


def segfault() -> None:
    ctypes.string_at(0)


def raise_system_exit(code: int = 5) -> None:
    raise SystemExit(code)


def record_init(value: Any) -> None:
    global _init_value
    _init_value = value


def read_init(_: Any = None) -> Any:
    return _init_value


def failing_init() -> None:
    raise RuntimeError("initializer failed on purpose")


def exiting_init() -> None:
    os._exit(7)


def current_thread_name(_: Any = None) -> str:
    return threading.current_thread().name


class UnpicklableArg:
    """Raises when pickled (a ``__reduce__`` that fails)."""

    def __reduce__(self) -> Any:
        raise TypeError("UnpicklableArg refuses to be pickled")


class FailsToUnpickle:
    """Pickles fine, raises while being unpickled in the worker."""

    def __reduce__(self) -> Any:
        return (_raise_on_load, ())


def _raise_on_load() -> None:
    raise RuntimeError("FailsToUnpickle raised while being unpickled")


class ExitsOnUnpickle:
    """Pickles fine, exits the unpickling process with code 9."""

    def __reduce__(self) -> Any:
        return (os._exit, (9,))


class SegfaultsOnUnpickle:
    """Pickles fine, segfaults the unpickling process."""

    def __reduce__(self) -> Any:
        return (ctypes.string_at, (0,))


def return_lock(_: Any = None) -> threading.Lock:
    return threading.Lock()


def return_unpicklable(_: Any = None) -> UnpicklableArg:
    return UnpicklableArg()


class _RaisesInParent:
    def __reduce__(self) -> Any:
        # Pickles in the worker; unpickling calls this in the parent, which
        # has no such process-local attribute set.
        return (_load_only_in_worker, (os.getpid(),))


def _load_only_in_worker(pid: int) -> Any:
    if os.getpid() != pid:
        raise RuntimeError("this result cannot be unpickled outside its worker")
    return None


def return_unloadable(_: Any = None) -> Any:
    return _RaisesInParent()


def big_payload(nbytes: int) -> bytes:
    return b"x" * nbytes


def busy_then_exit(seconds: float, code: int) -> None:
    time.sleep(seconds)
    os._exit(code)


# -- fault-tolerance suite (executors.testing.faults) ----------------------


def write_pid_then_sleep(path: str, seconds: float, value: Any = None) -> Any:
    """Publish the worker's pid in ``path``, then sleep: a target to kill."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    # Atomic: the test never reads a half-written pid.
    os.replace(tmp, path)
    time.sleep(seconds)
    return value


def ignore_sigterm_then_sleep(folder: str, seconds: float) -> None:
    """Ignore SIGTERM (as a task that installs its own handler may), then sleep.

    Creates ``folder/<pid>`` once SIGTERM is ignored. Only the main thread
    can change a signal's handler: elsewhere (Dask's worker threads) the
    task just sleeps.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(os.path.join(folder, str(os.getpid())), "w"):
        pass
    time.sleep(seconds)


def touch_after(path: str, seconds: float) -> str:
    """Sleep, then create ``path``: proof that the task ran to its end."""
    time.sleep(seconds)
    with open(path, "w") as f:
        f.write("done")
    return path


class RaisesOnPickle:
    """Raises a ValueError (not the usual TypeError) when pickled."""

    def __reduce__(self) -> Any:
        raise ValueError("RaisesOnPickle refuses to be pickled")


class ExitsOnPickle:
    """Exits the pickling process with code 11 from inside ``__reduce__``."""

    def __reduce__(self) -> Any:
        os._exit(11)


class SegfaultsOnPickle:
    """Segfaults the pickling process from inside ``__reduce__``."""

    def __reduce__(self) -> Any:
        ctypes.string_at(0)
        return (int, ())


def return_raises_on_pickle(_: Any = None) -> RaisesOnPickle:
    return RaisesOnPickle()


def return_exits_on_pickle(_: Any = None) -> ExitsOnPickle:
    return ExitsOnPickle()


def return_segfaults_on_pickle(_: Any = None) -> SegfaultsOnPickle:
    return SegfaultsOnPickle()


def exit_while_sending(nbytes: int, delay: float, code: int = 13) -> bytes:
    """Return ``nbytes`` of data and exit ``delay`` s later, maybe mid-send."""
    threading.Timer(delay, os._exit, (code,)).start()
    return b"x" * nbytes


def segfaulting_init() -> None:
    ctypes.string_at(0)


class FalsyError(Exception):
    """An exception whose ``bool()`` is false (it defines ``__len__``)."""

    def __len__(self) -> int:
        return 0


def raise_falsy(message: str = "falsy") -> None:
    raise FalsyError(message)


def system_exit_at(x: int, bad: int) -> int:
    """``x``, or ``SystemExit(3)`` for the item ``bad``."""
    if x == bad:
        raise SystemExit(3)
    return x


class Holder:
    """A weak-referenceable object with a payload, to find stale references."""

    def __init__(self, value: Any = None, size: int = 0) -> None:
        self.value = value
        self.payload = bytes(size)

    def get(self, _: Any = None) -> Any:
        return self.value


def make_holder(value: Any) -> Holder:
    return Holder(value)


class Flaky(Exception):
    """What :func:`fail_first` raises: a transient failure worth a retry."""


def _first_attempt(path: str) -> bool:
    """True on the first call for ``path`` (across processes): it creates it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def fail_first(path: str, value: Any = None) -> Any:
    """Raise :class:`Flaky` on the first attempt, then return ``value``."""
    if _first_attempt(path):
        raise Flaky("first attempt fails")
    return value


def die_first(path: str, value: Any = None) -> Any:
    """Kill the worker on the first attempt, then return ``value``."""
    if _first_attempt(path):
        os._exit(9)
    return value


def count_and_fail(path: str) -> None:
    """Record one attempt in ``path``, then raise :class:`Flaky`."""
    with open(path, "a") as log:
        log.write("attempt\n")
    raise Flaky("always fails")
