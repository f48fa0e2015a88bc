"""Task functions the workloads run.

They live in an importable module, not in ``__main__``, so workers started
with spawn or forkserver (and raw pools that pickle by reference) can
unpickle them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "burn",
    "burn_expected",
    "noop",
    "read_shared",
    "run_batch",
    "run_to_pipe",
    "sleep_for",
    "unique_memory",
]


def noop(x: Any) -> Any:
    """Return ``x``: a no-op whose results can still be checked."""
    return x


def sleep_for(seconds: float) -> float:
    """Sleep, then return the seconds slept (the classic workload)."""
    time.sleep(seconds)
    return seconds


def burn(loops: int) -> tuple[float, int]:
    """Spend CPU in pure Python; return (seconds taken in the worker, value).

    The time is measured inside the worker so the parent can tell how busy
    the workers were; the value is checked against :func:`burn_expected`.
    """
    start = time.perf_counter()
    acc = 0
    for i in range(loops):
        acc += i * i
    return time.perf_counter() - start, acc


def burn_expected(loops: int) -> int:
    """The value :func:`burn` returns, in closed form (sum of squares)."""
    n = loops - 1
    return n * (n + 1) * (2 * n + 1) // 6 if loops > 0 else 0


def run_batch(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """Apply ``fn`` to each item: hand-made chunking for raw libraries."""
    return [fn(x) for x in items]


def run_to_pipe(conn: Any, fn: Callable[[Any], Any], x: Any) -> None:
    """Body of a one-process-per-task worker: run ``fn(x)``, send the outcome."""
    try:
        outcome: tuple[bool, Any] = (True, fn(x))
    except BaseException as exc:
        outcome = (False, exc)
    conn.send(outcome)
    conn.close()


def read_shared(box: Any) -> float:
    """Read a shared array at its ends and middle (what a lookup costs).

    The handle's object where nothing is pickled.
    """
    value = getattr(box, "value", box)
    return float(value[0] + value[len(value) // 2] + value[-1])


def unique_memory(_: Any = None) -> tuple[int, int]:
    """(pid, unique set size in bytes) of the worker running it."""
    import os

    import psutil

    return os.getpid(), int(psutil.Process().memory_full_info().uss)
