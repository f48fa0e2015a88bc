"""Synchronous vs asynchronous ``submit``, printing the worker pids.

Calling ``submit(...).result()`` in a loop waits for each task before sending
the next: five one-second tasks take five seconds however many workers there
are (the classic ``Pool.apply``). Submitting everything first and collecting
afterwards keeps both workers busy: about three seconds on two workers (the
classic ``Pool.apply_async``).

Run::

    python examples/sync_vs_async.py --backend process
    python examples/sync_vs_async.py --backend thread --seconds 0.2
"""

from __future__ import annotations

import argparse
import os
import time

import executors

TASKS = 5


def work(n: int, seconds: float) -> tuple[int, int]:
    """Pretend to work; print and return who ran task ``n``."""
    # Printed in the worker, flushed so that it shows up at once even when
    # the worker's stdout is a pipe.
    print(f"  task {n} running in pid {os.getpid()}", flush=True)
    time.sleep(seconds)
    return n, os.getpid()


def synchronous(pool: executors.Executor, seconds: float) -> None:
    print("== synchronous: submit(...).result() one task at a time ==")
    start = time.perf_counter()
    results = [pool.submit(work, n, seconds).result() for n in range(TASKS)]
    elapsed = time.perf_counter() - start
    print(f"synchronous: {results} in {elapsed:.2f} s")


def asynchronous(pool: executors.Executor, seconds: float) -> None:
    print("== asynchronous: submit every task, then collect ==")
    start = time.perf_counter()
    futures = [pool.submit(work, n, seconds) for n in range(TASKS)]
    print(f"  all {TASKS} submitted after {time.perf_counter() - start:.3f} s")
    results = [f.result() for f in futures]
    elapsed = time.perf_counter() - start
    print(f"asynchronous: {results} in {elapsed:.2f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--backend", default="process", help="backend name")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="length of each task"
    )
    args = parser.parse_args(argv)
    # Every backend takes max_workers (inline too: it runs one task at a time).
    options = {"max_workers": 2}
    print(f"main process: pid {os.getpid()}", flush=True)
    with executors.create(args.backend, **options) as pool:
        print(f"{pool!r}", flush=True)
        # Warm up: process pools start their workers on first use, and the
        # start-up is not what this example measures.
        pool.submit(abs, 0).result()
        synchronous(pool, args.seconds)
        asynchronous(pool, args.seconds)


if __name__ == "__main__":
    main()
