"""A program interrupted with Ctrl-C in the middle of a ``map``.

Usage::

    python sigint_map.py BACKEND OPTIONS_JSON MODE

``MODE`` is ``with`` (the executor is a context manager and the map eager:
the common program) or ``bare`` (no shutdown at all and a lazy map: the
program relies on interpreter exit). In ``with`` mode on a backend with
``process_isolation`` the tasks take 30 s each, so the program exits in time
only if Ctrl-C stops running tasks; elsewhere they take 50 ms.

The script prints ``RUNNING`` once the map has yielded its first result;
tests/test_interrupt.py then sends SIGINT to this process only. On
``KeyboardInterrupt`` it prints ``KeyboardInterrupt`` and exits with 130, as
a shell does after Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import executors
from executors.testing import tasks

SHORT = [0.05] * 400  # 10 s of work on two workers: interrupted long before
LONG = [0.05, 0.05] + [30.0] * 30


def _announce(results: Any) -> None:
    for i, _ in enumerate(results):
        if i == 0:
            print("RUNNING", flush=True)
    print("FINISHED", flush=True)


def main(backend: str, options: dict[str, Any], mode: str) -> None:
    if mode == "with":
        with executors.create(backend, **options) as ex:
            caps = ex.capabilities
            items = LONG if caps.process_isolation else SHORT
            # A backend that runs tasks inside submit() would run the whole
            # eager map before returning it; read lazily so RUNNING shows.
            lazy = None if caps.runs_concurrently else 2
            _announce(ex.map(tasks.sleep_and_return, items, buffersize=lazy))
    else:
        ex = executors.create(backend, **options)
        _announce(ex.map(tasks.sleep_and_return, SHORT, buffersize=8))


if __name__ == "__main__":
    # Started from a background job, a program inherits SIGINT ignored and
    # Python then installs no KeyboardInterrupt handler: restore it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3])
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(130)
