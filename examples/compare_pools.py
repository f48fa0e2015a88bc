"""The classic table of pool approaches, measured on this machine.

Stdlib process and thread pools, ``multiprocessing.Pool``, a hand-written
queue pool, joblib and a Dask cluster behind one API: the same four
measurements run on each backend through :func:`executors.create`, and the
table is printed with the figures of *this* run. Nothing is hard-coded, and
the figures are as noisy as the machine: run it on a quiet one.

Columns:

* ``start-up``: ``create()`` until the first result (workers started).
* ``round trip``: median time of one ``submit(...).result()`` on a warm pool.
* ``tiny tasks/s``: ``map`` over many no-op tasks with the default chunking.
* ``CPU speed-up``: ``2 x workers`` CPU-bound tasks on the pool vs the same
  tasks run one after the other in this process just before (about the
  worker count when the pool runs Python code in parallel on idle CPUs;
  about 1 for threads, because of the GIL).
* ``survives crash`` / ``cancels queued``: declared capabilities.

Run::

    python examples/compare_pools.py                 # every available backend
    python examples/compare_pools.py --backend process --backend thread
    python examples/compare_pools.py --quick         # smaller workloads

The benchmark suite measures much more, with repeats, and puts each
backend next to the raw library it wraps (``python -m executors.bench
--quick``; ``--workloads classic`` runs the classic five one-second tasks);
this example is the five-minute version.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import executors

WORKERS = 2


def noop(x: int) -> int:
    return x


def spin(n: int) -> int:
    """CPU-bound pure Python: holds the GIL all the time."""
    total = 0
    for i in range(n):
        total += i * i
    return total


@dataclass
class Row:
    backend: str
    summary: str
    workers: int
    startup: float
    round_trip: float
    tiny_rate: float
    speedup: float
    survives_crash: bool
    cancels_queued: bool


@dataclass
class Workload:
    round_trips: int
    tiny_tasks: int
    spin_n: int


def serial_seconds(load: Workload, tasks: int) -> float:
    """Seconds ``tasks`` spin tasks take one after the other in this process."""
    start = time.perf_counter()
    for _ in range(tasks):
        spin(load.spin_n)
    return time.perf_counter() - start


def measure(name: str, summary: str, load: Workload) -> Row:
    start = time.perf_counter()
    # Every backend takes max_workers (inline too: it runs one task at a time).
    with executors.create(name, max_workers=WORKERS) as pool:
        pool.submit(noop, 0).result()
        startup = time.perf_counter() - start

        trips = []
        for i in range(load.round_trips):
            start = time.perf_counter()
            pool.submit(noop, i).result()
            trips.append(time.perf_counter() - start)

        start = time.perf_counter()
        count = sum(1 for _ in pool.map(noop, range(load.tiny_tasks)))
        tiny_rate = count / (time.perf_counter() - start)

        # The serial baseline is measured right before, so that both runs
        # see the same load from the rest of the machine.
        tasks = 2 * pool.max_workers
        serial = serial_seconds(load, tasks)
        start = time.perf_counter()
        list(pool.map(spin, [load.spin_n] * tasks, chunksize=1))
        speedup = serial / (time.perf_counter() - start)

        caps = pool.capabilities
        return Row(
            name,
            summary,
            pool.max_workers,
            startup,
            statistics.median(trips),
            tiny_rate,
            speedup,
            caps.survives_worker_death,
            caps.cancels_queued,
        )


HEADER = (
    "| backend | runs on | workers | start-up | round trip | tiny tasks/s "
    "| CPU speed-up | survives crash | cancels queued |"
)


def format_row(row: Row) -> str:
    yes_no = {True: "yes", False: "no"}
    return (
        f"| {row.backend} | {row.summary} | {row.workers} "
        f"| {row.startup * 1000:.0f} ms | {row.round_trip * 1000:.2f} ms "
        f"| {row.tiny_rate:,.0f} | {row.speedup:.2f}x "
        f"| {yes_no[row.survives_crash]} | {yes_no[row.cancels_queued]} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument(
        "--backend",
        action="append",
        help="measure this backend (repeatable); default: every available one",
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    args = parser.parse_args(argv)
    load = (
        Workload(round_trips=20, tiny_tasks=2_000, spin_n=1_000_000)
        if args.quick
        else Workload(round_trips=200, tiny_tasks=20_000, spin_n=3_000_000)
    )

    infos = {info.name: info for info in executors.list_backends()}
    names = args.backend or [name for name, info in infos.items() if info.available]
    print(
        f"Python {platform.python_version()} on {platform.system()}, "
        f"{os.cpu_count()} CPU(s), {WORKERS} workers per pool",
        flush=True,
    )
    rows = []
    failed = []
    for name in names:
        info = infos.get(name)
        summary = info.summary if info is not None else ""
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        try:
            rows.append(format_row(measure(name, summary, load)))
        except Exception as exc:
            # One broken backend must not hide the figures of the others.
            rows.append(f"| {name} | {summary} | failed: {type(exc).__name__}: {exc} |")
            failed.append(name)

    print()
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    for row in rows:
        print(row)
    for info in infos.values():
        if not info.available:
            print(f"(not measured: {info.name}: {info.error})")
    if failed:
        sys.exit(f"measuring failed on: {', '.join(failed)}")


if __name__ == "__main__":
    main()
