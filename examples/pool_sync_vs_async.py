"""``sync_vs_async.py`` for ``multiprocessing.Pool``: ``apply`` vs ``apply_async``.

The classic lesson, in the classic API: ``pool.apply`` in a loop waits for
each task (five one-second tasks take five seconds on any pool), while
``apply_async`` for every task, then ``get()`` on each, keeps both workers
busy (about three seconds on two workers). The only change from a
``multiprocessing`` script is the import, and the backend is a choice::

    python examples/pool_sync_vs_async.py --backend process
    python examples/pool_sync_vs_async.py --backend queue --seconds 0.2
"""

from __future__ import annotations

import argparse
import os
import time

from executors import Pool  # was: from multiprocessing import Pool

TASKS = 5


def work(n: int, seconds: float) -> tuple[int, int]:
    """Pretend to work; print and return who ran task ``n``."""
    print(f"  task {n} running in pid {os.getpid()}", flush=True)
    time.sleep(seconds)
    return n, os.getpid()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--backend", default="process", help="backend name")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="length of each task"
    )
    args = parser.parse_args(argv)
    print(f"main process: pid {os.getpid()}", flush=True)
    with Pool(2, backend=args.backend) as pool:
        print(f"{pool!r}", flush=True)
        pool.apply(abs, (0,))  # start the workers before timing

        print("== synchronous: apply() one task at a time ==", flush=True)
        start = time.perf_counter()
        results = [pool.apply(work, (n, args.seconds)) for n in range(TASKS)]
        print(f"synchronous: {results} in {time.perf_counter() - start:.2f} s")

        print("== asynchronous: apply_async() every task, then get() ==", flush=True)
        start = time.perf_counter()
        pending = [pool.apply_async(work, (n, args.seconds)) for n in range(TASKS)]
        print(f"  all {TASKS} submitted after {time.perf_counter() - start:.3f} s")
        results = [r.get() for r in pending]
        print(f"asynchronous: {results} in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
