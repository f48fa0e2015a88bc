"""A program whose own function, defined in ``__main__``, raises in a worker.

Usage::

    python raise_in_main.py BACKEND OPTIONS_JSON

Prints the formatted exception of the failed task, the worker's traceback
included, between ``BEGIN`` and ``END``. The worker's traceback must name
this file and line, and show the source line, as the stdlib pool's does.
"""

from __future__ import annotations

import json
import sys
import traceback

import executors


def fail_here(x: int) -> int:
    raise ValueError(f"task {x} failed on purpose")  # the line to find


def main(backend: str, options: dict[str, object]) -> None:
    with executors.create(backend, **options) as ex:
        future = ex.submit(fail_here, 7)
        try:
            future.result(timeout=120)
        except ValueError as exc:
            print("BEGIN", flush=True)
            print("".join(traceback.format_exception(exc)), flush=True)
            print("END", flush=True)


# The guard matters: forkserver and spawn workers import the main module.
if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
