"""The caller of the Celery host tests: a user's program, run in host A.

    REDIS_PASSWORD=... python celery_caller.py BROKER_HOST PORT MODE WORKERS N

Waits until WORKERS Celery workers answer a ping, then runs N tasks of
10 ms, each returning the value of ``EXECUTORS_TEST_HOST`` in the worker
that ran it (the test sets it per host):

* ``map``: ``ex.map`` over N items, with ``retries=2``; prints ``quarter``
  after a quarter of the results, then ``done`` with each result and when
  it arrived, and how long ``shutdown()`` took.
* ``futures``: N ``submit`` calls; prints ``quarter`` once a quarter are
  done, then ``settled`` with a count of how they ended, then ``done``
  with how each future ended and when, and how long ``shutdown()`` took.
* ``no-retries``: the same, on an executor without ``retries=``.

What it prints, and how, is ``_calling.py``'s, which the Dask caller shares.
"""

import os
import sys
import time

from _calling import READY_SECONDS, emit, finish, map_results, run, run_futures
from celery import Celery

import executors


def where(i):
    """A 10 ms task that says which host ran it."""
    time.sleep(0.01)
    return os.environ.get("EXECUTORS_TEST_HOST"), i


def wait_for_workers(url, count):
    app = Celery("ping", set_as_current=False, broker=url, backend=url)
    deadline = time.monotonic() + READY_SECONDS
    try:
        while True:
            answered = app.control.ping(timeout=1.0)
            if len(answered) >= count:
                return sorted(name for reply in answered for name in reply)
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {answered} answered a ping")
    finally:
        app.close()


def main():
    host, port, mode = sys.argv[1:4]
    workers, n = map(int, sys.argv[4:6])
    password = os.environ["REDIS_PASSWORD"]
    url = f"redis://:{password}@{host}:{port}/0"
    emit("ready", workers=wait_for_workers(url, workers))
    if mode == "no-retries":
        # What a task lost with its worker does without retries=.
        ex = executors.create("celery", broker=url, backend=url, max_workers=2)
        run_futures(ex, where, n)
        return
    ex = executors.create("celery", broker=url, backend=url, max_workers=2, retries=2)
    if mode == "map":
        finish(ex, results=map_results(ex, where, n))
    else:
        run_futures(ex, where, n)


if __name__ == "__main__":
    run(main)
