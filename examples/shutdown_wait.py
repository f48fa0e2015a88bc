"""``shutdown(wait=True)`` vs ``shutdown(wait=False)``.

``shutdown(wait=True)`` (what ``with`` does) returns once every submitted
task has finished and the workers have exited: the classic ``pool.close();
pool.join()``. ``shutdown(wait=False)`` returns in milliseconds; no new task
is accepted, but the submitted ones still run to the end and print, and their
futures still get their results.

Run::

    python examples/shutdown_wait.py --backend process
    python examples/shutdown_wait.py --backend thread --seconds 0.2
"""

from __future__ import annotations

import argparse
import os
import time

import executors

TASKS = 4


def work(n: int, seconds: float) -> int:
    time.sleep(seconds)
    # Printed by the worker after its sleep: with wait=False these lines
    # appear after shutdown() has returned.
    print(f"  task {n} done in pid {os.getpid()}", flush=True)
    return n * n


def run(backend: str, seconds: float, wait: bool) -> None:
    # Every backend takes max_workers (inline too: it runs one task at a time).
    pool = executors.create(backend, max_workers=2)
    pool.submit(abs, 0).result()  # start the workers before timing
    print(f"== shutdown(wait={wait}) ==", flush=True)
    futures = [pool.submit(work, n, seconds) for n in range(TASKS)]
    start = time.perf_counter()
    pool.shutdown(wait=wait)
    took = time.perf_counter() - start
    finished = sum(f.done() for f in futures)
    print(
        f"shutdown(wait={wait}) returned after {took * 1000:.0f} ms "
        f"with {finished} of {TASKS} tasks finished",
        flush=True,
    )
    if not pool.capabilities.runs_concurrently:
        print("  (this backend ran each task inside submit(): nothing was left)")
    try:
        pool.submit(abs, 1)
    except RuntimeError as exc:
        print(f"  a new submit now raises RuntimeError: {exc}", flush=True)
    # The futures still complete after shutdown(wait=False).
    results = [f.result() for f in futures]
    print(f"results after shutdown(wait={wait}): {results}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--backend", default="process", help="backend name")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="length of each task"
    )
    args = parser.parse_args(argv)
    run(args.backend, args.seconds, wait=True)
    run(args.backend, args.seconds, wait=False)


if __name__ == "__main__":
    main()
