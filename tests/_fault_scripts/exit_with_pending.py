"""A program that ends with work pending and never calls ``shutdown()``.

Usage::

    python exit_with_pending.py BACKEND OPTIONS_JSON DIRECTORY COUNT

Submits ``COUNT`` tasks that each sleep briefly and then create a file in
``DIRECTORY``, and falls off the end of the module. The contract: every
task still runs to its end, the exit code is 0 and nothing is written to
stderr.
"""

from __future__ import annotations

import json
import os
import sys

import executors
from executors.testing import tasks


def main() -> None:
    backend, options = sys.argv[1], json.loads(sys.argv[2])
    directory, count = sys.argv[3], int(sys.argv[4])
    ex = executors.create(backend, **options)
    for i in range(count):
        ex.submit(tasks.touch_after, os.path.join(directory, f"task-{i}"), 0.2)
    print("SUBMITTED", flush=True)


# The guard matters: forkserver and spawn workers import the main module.
if __name__ == "__main__":
    main()
