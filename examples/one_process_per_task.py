"""One process per task vs a pool of two, on any backend.

The classic first lesson on process pools: starting one process for each of
five one-second tasks finishes in about one second, but costs five process
start-ups and five processes alive at once; a pool of two workers reuses its
two processes and takes about three seconds (ceil(5 / 2) rounds of tasks).

Here "one process per task" is a fresh one-worker executor per task, so the
same code shows what each backend does: process backends start a process per
executor, ``thread`` a thread, ``inline`` runs everything in the caller (and
so takes five seconds whatever the pool size).

Run::

    python examples/one_process_per_task.py --backend process
    python examples/one_process_per_task.py --backend thread --seconds 0.2
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import executors

TASKS = 5


def work(n: int, seconds: float) -> tuple[int, int, str]:
    """Pretend to work for ``seconds``; report who ran task ``n``."""
    time.sleep(seconds)
    return n, os.getpid(), threading.current_thread().name


def make(backend: str, workers: int) -> executors.Executor:
    # Every backend takes max_workers (inline too: it runs one task at a time).
    return executors.create(backend, max_workers=workers)


def report(title: str, results: list[tuple[int, int, str]], elapsed: float) -> None:
    for n, pid, thread in results:
        print(f"  task {n} ran in pid {pid} ({thread})")
    pids = {pid for _, pid, _ in results}
    where = " (the main process)" if pids == {os.getpid()} else ""
    print(
        f"{title}: {len(results)} tasks in {elapsed:.2f} s, "
        f"{len(pids)} distinct pid(s){where}"
    )


def one_executor_per_task(backend: str, seconds: float) -> None:
    print(f"== one {backend!r} executor (one worker) per task ==")
    start = time.perf_counter()
    pools = [make(backend, 1) for _ in range(TASKS)]
    try:
        futures = [pool.submit(work, n, seconds) for n, pool in enumerate(pools)]
        results = [f.result() for f in futures]
    finally:
        for pool in pools:
            pool.shutdown()
    report("one per task", results, time.perf_counter() - start)


def one_pool_of_two(backend: str, seconds: float) -> None:
    start = time.perf_counter()
    with make(backend, 2) as pool:
        print(f"== one {backend!r} executor with {pool.max_workers} worker(s) ==")
        futures = [pool.submit(work, n, seconds) for n in range(TASKS)]
        results = [f.result() for f in futures]
    report(f"pool of {pool.max_workers}", results, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--backend", default="process", help="backend name")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="length of each task"
    )
    args = parser.parse_args(argv)
    print(f"main process: pid {os.getpid()}")
    one_executor_per_task(args.backend, args.seconds)
    one_pool_of_two(args.backend, args.seconds)


# The guard is required: process backends may start workers that import this
# file, and without it each worker would start the demo again.
if __name__ == "__main__":
    main()
