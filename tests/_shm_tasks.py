"""Task functions for tests/test_shm.py, importable by spawned workers."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np


def negate_in_place(array: np.ndarray) -> np.ndarray:
    """Mutate the argument (it is the worker's own), return it."""
    array *= -1
    return array


def same(value: Any) -> Any:
    return value


def describe(array: np.ndarray) -> tuple[bool, float]:
    """The argument's writability and sum, as the worker sees them."""
    return bool(array.flags.writeable), float(array.sum())


def make(nbytes: int, fill: float) -> np.ndarray:
    return np.full(nbytes // 8, fill)


def hold_then_die(array: np.ndarray) -> None:
    """Die by SIGKILL while the argument's pages are held."""
    array[0] += 1
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def memfds(_: Any = None) -> int:
    """How many shared memory segments this process holds descriptors of."""
    return count_memfds(os.getpid())


def count_memfds(pid: int) -> int:
    count = 0
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("/memfd:executors-shm"):
            count += 1
    return count


def fail_first(array: np.ndarray, marker: str) -> float:
    """Fail the first attempt (leaving ``marker``), succeed on the retry."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ValueError("first attempt")
    return float(array.sum())


def negate_then_fail_first(array: np.ndarray, marker: str) -> float:
    """Mutate the argument; fail the first attempt (leaving ``marker``)."""
    array *= -1
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ValueError("first attempt")
    return float(array[1])


class Counted:
    """Counts how often it is unpickled in this process."""

    loads = 0

    def __init__(self, payload: list[int]) -> None:
        self.payload = payload

    def __setstate__(self, state: dict[str, Any]) -> None:
        Counted.loads += 1
        self.__dict__.update(state)


def read_shared(box: dict[str, Any]) -> tuple[bool, float, int]:
    """(writable, sum, pid) of the shared array inside ``box``."""
    array = box["array"]
    return bool(array.flags.writeable), float(array.sum()), os.getpid()


def unique_memory(_: Any = None) -> int:
    import psutil

    return int(psutil.Process().memory_full_info().uss)


def count_loads(counted: Counted) -> tuple[int, int]:
    return Counted.loads, len(counted.payload)
