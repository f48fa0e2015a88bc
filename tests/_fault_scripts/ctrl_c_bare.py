"""Ctrl-C in a ``map`` of an executor that is never shut down.

Usage::

    python ctrl_c_bare.py BACKEND OPTIONS_JSON

The common script: ``create()`` without a ``with`` block, then
``list(ex.map(slow, range(100)))`` with ``slow`` defined right here. It
prints ``READY`` once its workers are up; tests/test_interrupt.py then sends
SIGINT, to its whole process group (Ctrl-C in a terminal) or to it alone
(``kill -INT``). The ``KeyboardInterrupt`` is left unhandled, as in most
scripts: Python prints it and exits. On a backend with ``process_isolation``
each task sleeps 30 s, so the program exits in time only if the running
tasks are stopped; elsewhere they cannot be (threads), and take 0.2 s.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import executors
from executors.testing import tasks

SECONDS = 0.2


def slow(x: int) -> int:
    time.sleep(SECONDS)
    return x


def main(backend: str, options: dict[str, object]) -> None:
    global SECONDS
    ex = executors.create(backend, **options)
    if ex.capabilities.process_isolation:
        SECONDS = 30.0  # travels with slow: cloudpickle sends the global
    ex.submit(tasks.identity, 0).result(timeout=120)
    print("READY", flush=True)
    print(len(list(ex.map(slow, range(100)))), flush=True)


if __name__ == "__main__":
    # Started from a background job, a program inherits SIGINT ignored and
    # Python then installs no KeyboardInterrupt handler: restore it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main(sys.argv[1], json.loads(sys.argv[2]))
