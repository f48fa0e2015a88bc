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

Every line it prints is a JSON object; times are ``time.monotonic()``,
which the test process shares (one kernel, one clock).
"""

import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import wait

from celery import Celery

import executors

#: How long the program waits for the workers, for its results after a
#: quarter of them, and for ``shutdown()``; then it reports what it has.
READY_SECONDS = 120.0
SETTLE_SECONDS = 90.0
SHUTDOWN_SECONDS = 30.0


def where(i):
    """A 10 ms task that says which host ran it."""
    time.sleep(0.01)
    return os.environ.get("EXECUTORS_TEST_HOST"), i


def emit(event, **fields):
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


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


def shut_down(ex):
    started = time.monotonic()
    closing = threading.Thread(target=ex.shutdown, daemon=True)
    closing.start()
    closing.join(SHUTDOWN_SECONDS)
    return None if closing.is_alive() else time.monotonic() - started


def run_map(ex, n):
    results = []
    for host, i in ex.map(where, range(n), timeout=SETTLE_SECONDS):
        results.append((time.monotonic(), host, i))
        if len(results) == n // 4:
            emit("quarter")
    took = shut_down(ex)
    emit("done", results=results, shutdown_seconds=took)
    if took is None:
        os._exit(1)


def run_futures(ex, n):
    settled = {}
    quarter = threading.Event()

    def record(i):
        settled[i] = time.monotonic()
        if len(settled) >= n // 4:
            quarter.set()

    futures = []
    for i in range(n):
        future = ex.submit(where, i)
        future.add_done_callback(lambda f, i=i: record(i))
        futures.append(future)
    if quarter.wait(SETTLE_SECONDS):
        emit("quarter")
    wait(futures, timeout=SETTLE_SECONDS)
    # Done-callbacks run on the library's callback thread, a moment later.
    deadline = time.monotonic() + 10
    while len(settled) < sum(f.done() for f in futures):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    outcomes = []
    for i, future in enumerate(futures):
        if not future.done():  # a hang: the test reports it
            outcomes.append((i, "pending", None, None))
        elif future.cancelled():
            outcomes.append((i, "cancelled", settled.get(i), None))
        elif future.exception() is None:
            outcomes.append((i, "ok", settled.get(i), future.result()[0]))
        else:
            error = future.exception()
            outcomes.append((i, type(error).__name__, settled.get(i), str(error)))
    emit("settled", counts=Counter(kind for _, kind, _, _ in outcomes))
    took = shut_down(ex)
    emit("done", outcomes=outcomes, shutdown_seconds=took)
    if took is None:
        os._exit(1)  # shutdown() hangs: the test reports it


def main():
    host, port, mode = sys.argv[1:4]
    workers, n = map(int, sys.argv[4:6])
    password = os.environ["REDIS_PASSWORD"]
    url = f"redis://:{password}@{host}:{port}/0"
    emit("ready", workers=wait_for_workers(url, workers))
    if mode == "no-retries":
        # What a task lost with its worker does without retries=.
        ex = executors.create("celery", broker=url, backend=url, max_workers=2)
        run_futures(ex, n)
        return
    ex = executors.create("celery", broker=url, backend=url, max_workers=2, retries=2)
    if mode == "map":
        run_map(ex, n)
    else:
        run_futures(ex, n)


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        emit("error", message=repr(exc))
        os._exit(1)
