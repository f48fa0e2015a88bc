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

What it prints, and how, is ``_calling.py``'s, which the Celery caller shares.
"""

import sys
import time

from _calling import READY_SECONDS, emit, map_results, run, run_futures
from distributed.security import Security

import executors


def where(i):
    """A 10 ms task that says which worker ran it."""
    from distributed import get_worker

    time.sleep(0.01)
    return get_worker().address, i


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
        emit("done", results=map_results(ex, where, n))
        ex.shutdown()
    else:
        run_futures(ex, where, n)


if __name__ == "__main__":
    run(main)
