"""CPython's ``test_shutdown_deadlock``, on an executor of this library.

Usage::

    python shutdown_deadlock.py BACKEND

Submits a task that kills its worker 0.1 s later and calls
``shutdown(wait=True)`` at once, so the worker dies while the shutdown
waits. The contract: the shutdown returns, the future fails with a
``BrokenExecutor`` and the program prints ``DONE <error type>``.

Callables go by reference (``cloudpickle=False``): the interpreter that runs
this script may have no cloudpickle (a bare pyenv Python given the source
tree on ``PYTHONPATH``).
"""

from __future__ import annotations

import sys
from concurrent.futures import BrokenExecutor

import executors
from executors.testing import tasks


def main() -> None:
    executor = executors.create(sys.argv[1], max_workers=2, cloudpickle=False)
    with executor:
        future = executor.submit(tasks.busy_then_exit, 0.1, 1)
        executor.shutdown(wait=True)
    error = future.exception(timeout=0)
    assert isinstance(error, BrokenExecutor), repr(error)
    print("DONE", type(error).__name__, flush=True)


if __name__ == "__main__":
    main()
