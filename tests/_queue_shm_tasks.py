"""Task functions for tests/test_queue_shm.py, importable by spawned workers."""

from __future__ import annotations

import os
import signal
import time

import numpy as np


def make_or_die(index: int, nbytes: int, die_at: int) -> np.ndarray:
    """A large array per item; the item ``die_at`` kills its worker."""
    if index == die_at:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
    # Slow enough that a chunk sends its values in several messages.
    time.sleep(0.03)
    return np.full(nbytes // 8, float(index))


def make_then_die(nbytes: int) -> np.ndarray:
    """Return a large array, and let a thread kill the worker as it is sent."""
    import threading

    def kill() -> None:
        time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=kill, daemon=True).start()
    return np.ones(nbytes // 8)
