"""The caller of the multi-host Dask tests: a user's program, run in host A.

    python dask_caller.py ADDRESS MODE WORKER_THREADS N

Connects to the scheduler at ADDRESS with the client certificate in the
current directory, waits until the cluster has WORKER_THREADS threads, then
runs N tasks of 10 ms, each returning the address of the worker that ran it:

* ``map``: ``ex.map`` over N items; prints ``quarter`` after a quarter of
  the results, then ``done`` with each result and when it arrived.
* ``futures``: N ``submit`` calls; prints ``quarter`` once a quarter are
  done, then ``done`` with how each future ended and when, and how long
  ``shutdown()`` took.
* ``stranger``: connects with the certificates in ``stranger/``, of another
  CA, and prints ``refused`` with the error (or ``connected``).

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

from distributed.security import Security

import executors

#: How long the program waits for the cluster, for its results after a
#: quarter of them, and for ``shutdown()``; then it reports what it has.
READY_SECONDS = 120.0
SETTLE_SECONDS = 90.0
SHUTDOWN_SECONDS = 30.0


def where(i):
    """A 10 ms task that says which worker ran it."""
    from distributed import get_worker

    time.sleep(0.01)
    return get_worker().address, i


def emit(event, **fields):
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def run_map(ex, n):
    results = []
    for worker, i in ex.map(where, range(n), timeout=SETTLE_SECONDS):
        results.append((time.monotonic(), worker, i))
        if len(results) == n // 4:
            emit("quarter")
    emit("done", results=results)


def run_futures(ex, n):
    settled = {}
    quarter = threading.Event()

    def record(future, i):
        settled[i] = time.monotonic()
        if len(settled) >= n // 4:
            quarter.set()

    futures = []
    for i in range(n):
        future = ex.submit(where, i)
        future.add_done_callback(lambda f, i=i: record(f, i))
        futures.append(future)
    if quarter.wait(SETTLE_SECONDS):
        emit("quarter")
    wait(futures, timeout=SETTLE_SECONDS)
    # Left unfinished by then, a future counts as "pending": a hang.
    # Done-callbacks run on the library's callback thread, a moment later.
    deadline = time.monotonic() + 10
    while len(settled) < sum(f.done() for f in futures):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    outcomes = []
    for i, future in enumerate(futures):
        if not future.done():
            outcomes.append((i, "pending", None, None))
        elif future.cancelled():
            outcomes.append((i, "cancelled", settled.get(i), None))
        elif future.exception() is None:
            outcomes.append((i, "ok", settled.get(i), future.result()[0]))
        else:
            error = future.exception()
            outcomes.append((i, type(error).__name__, settled.get(i), str(error)))
    emit("settled", counts=Counter(kind for _, kind, _, _ in outcomes))
    started = time.monotonic()
    closing = threading.Thread(target=ex.shutdown, daemon=True)
    closing.start()
    closing.join(SHUTDOWN_SECONDS)
    took = None if closing.is_alive() else time.monotonic() - started
    emit("done", outcomes=outcomes, shutdown_seconds=took)
    if took is None:
        os._exit(1)  # shutdown() hangs: the test reports it


def try_a_stranger(address):
    """Connect with a certificate of another CA: mutual TLS refuses it."""
    security = Security(
        tls_ca_file="stranger/ca.pem",
        tls_client_cert="stranger/client-cert.pem",
        tls_client_key="stranger/client-key.pem",
        require_encryption=True,
    )
    try:
        executors.create("dask", address=address, security=security, connect_timeout=10)
    except Exception as exc:
        emit("refused", error=repr(exc))
    else:
        emit("connected")


def main():
    address, mode, threads, n = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:5])
    if mode == "stranger":
        try_a_stranger(address)
        return
    security = Security(
        tls_ca_file="ca.pem",  # the cluster's CA
        tls_client_cert="client-cert.pem",  # this program's certificate ...
        tls_client_key="client-key.pem",  # ... and key
        require_encryption=True,
    )
    ex = executors.create("dask", address=address, security=security)
    deadline = time.monotonic() + READY_SECONDS
    while ex.max_workers < threads:
        if time.monotonic() > deadline:
            emit("error", message=f"only {ex.max_workers} worker threads joined")
            return
        time.sleep(0.1)
    emit("ready", threads=ex.max_workers)
    if mode == "map":
        run_map(ex, n)
        ex.shutdown()
    else:
        run_futures(ex, n)


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        emit("error", message=repr(exc))
        raise
