"""A program whose atexit hook submits to a live executor.

Usage::

    python submit_at_exit.py BACKEND OPTIONS_JSON

The executor has run one task and is never shut down. At interpreter exit
the hook's ``submit`` must raise ``RuntimeError("cannot schedule new futures
after interpreter shutdown")``, as on the stdlib pools; the hook prints what
happened. Exit code 0, nothing on stderr.
"""

from __future__ import annotations

import atexit
import json
import sys

import executors
from executors.testing import tasks


def main() -> None:
    ex = executors.create(sys.argv[1], **json.loads(sys.argv[2]))

    def submit_late() -> None:
        try:
            fut = ex.submit(tasks.identity, 1)
        except RuntimeError as exc:
            print(f"{type(exc).__name__}: {exc}", flush=True)
        else:
            print(f"ACCEPTED: {fut!r}", flush=True)

    atexit.register(submit_late)
    assert ex.submit(tasks.add, 1, 1).result(timeout=60) == 2
    print("READY", flush=True)


# The guard matters: forkserver and spawn workers import the main module.
if __name__ == "__main__":
    main()
