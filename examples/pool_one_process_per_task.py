"""``one_process_per_task.py`` written for ``multiprocessing.Pool``.

Five tasks, first on a fresh one-worker ``Pool`` each (five processes at
once, about one task's time), then on one ``Pool(2)`` (two processes,
reused: about three tasks' time). Only the import differs from a
``multiprocessing`` script::

    python examples/pool_one_process_per_task.py --backend process
    python examples/pool_one_process_per_task.py --backend thread --seconds 0.2
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from executors import Pool  # was: from multiprocessing import Pool

TASKS = 5


def work(n: int, seconds: float) -> tuple[int, int, str]:
    """Pretend to work for ``seconds``; report who ran task ``n``."""
    time.sleep(seconds)
    return n, os.getpid(), threading.current_thread().name


def report(title: str, results: list[tuple[int, int, str]], elapsed: float) -> None:
    for n, pid, thread in results:
        print(f"  task {n} ran in pid {pid} ({thread})")
    pids = {pid for _, pid, _ in results}
    print(f"{title}: {len(results)} tasks in {elapsed:.2f} s, {len(pids)} pid(s)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--backend", default="process", help="backend name")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="length of each task"
    )
    args = parser.parse_args(argv)
    print(f"main process: pid {os.getpid()}")

    print(f"== one Pool(1) per task, backend {args.backend!r} ==")
    start = time.perf_counter()
    pools = [Pool(1, backend=args.backend) for _ in range(TASKS)]
    pending = [p.apply_async(work, (n, args.seconds)) for n, p in enumerate(pools)]
    results = [r.get() for r in pending]
    for p in pools:
        p.close()
        p.join()
    report("one per task", results, time.perf_counter() - start)

    print(f"== one Pool(2), backend {args.backend!r} ==")
    start = time.perf_counter()
    with Pool(2, backend=args.backend) as pool:
        results = pool.starmap(work, [(n, args.seconds) for n in range(TASKS)], 1)
    report("pool of 2", results, time.perf_counter() - start)


if __name__ == "__main__":
    main()
