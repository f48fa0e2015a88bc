"""``shutdown_wait.py`` for ``multiprocessing.Pool``: close + join vs terminate.

``close()`` then ``join()`` waits for every submitted task; ``terminate()``
stops the workers at once: the unfinished tasks fail (their ``get()`` raises
instead of waiting forever, as it would on the stdlib's Pool). Only the
import differs from a ``multiprocessing`` script::

    python examples/pool_shutdown_wait.py --backend process
    python examples/pool_shutdown_wait.py --backend thread --seconds 0.2
"""

from __future__ import annotations

import argparse
import time

from executors import Pool  # was: from multiprocessing import Pool

TASKS = 4


def work(n: int, seconds: float) -> int:
    time.sleep(seconds)
    return n * n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--backend", default="process", help="backend name")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="length of each task"
    )
    args = parser.parse_args(argv)

    pool = Pool(2, backend=args.backend)
    pool.apply(abs, (0,))  # start the workers before timing
    pending = [pool.apply_async(work, (n, args.seconds)) for n in range(TASKS)]
    start = time.perf_counter()
    pool.close()
    pool.join()
    took = time.perf_counter() - start
    finished = sum(r.ready() for r in pending)
    print(f"close() + join() returned after {took:.2f} s with {finished} of {TASKS}")
    print(f"results: {[r.get() for r in pending]}")
    try:
        pool.apply(abs, (1,))
    except ValueError as exc:
        print(f"  a new apply() now raises ValueError: {exc}")

    pool = Pool(2, backend=args.backend)
    pool.apply(abs, (0,))
    pending = [pool.apply_async(work, (n, args.seconds)) for n in range(TASKS)]
    start = time.perf_counter()
    pool.terminate()
    pool.join()
    took = time.perf_counter() - start
    outcomes = []
    for r in pending:
        try:
            outcomes.append(str(r.get(timeout=60)))
        except Exception as exc:  # the task was stopped or never ran
            outcomes.append(type(exc).__name__)
    print(f"terminate() + join() returned after {took:.2f} s: {outcomes}")


if __name__ == "__main__":
    main()
