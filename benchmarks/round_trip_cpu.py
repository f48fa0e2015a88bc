"""What a stream of round trips costs the caller's process in CPU, and idle.

Usage::

    python benchmarks/round_trip_cpu.py [--backend queue] [--calls 3000]

Runs ``submit(noop, 1).result()`` one call at a time on 2 workers and
prints the wall time, the parent process's CPU time (every thread of it)
and the workers' per call, then the CPU the idle executor takes over one
second. Needs psutil (the ``test`` extra).

Run it with ``PYTHONPATH=<tree>/src`` on two trees, in turn, to
see what a change to the waiting costs: the queue's worker (or manager)
polls before it sleeps (docs/backends/queue.md), which shows here.
"""

from __future__ import annotations

import argparse
import time

import executors
from executors.bench._tasks import noop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="queue")
    parser.add_argument("--calls", type=int, default=3000)
    options = parser.parse_args()
    with executors.create(options.backend, max_workers=2) as executor:
        for _ in range(300):  # warm: workers started, imports done
            executor.submit(noop, 1).result()
        children = _children_cpu()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(options.calls):
            executor.submit(noop, 1).result()
        wall = time.perf_counter() - wall
        cpu, children = time.process_time() - cpu, _children_cpu() - children
        time.sleep(0.2)
        idle_children = _children_cpu()
        idle = time.process_time()
        time.sleep(1.0)
        idle, idle_children = (
            time.process_time() - idle,
            _children_cpu() - idle_children,
        )
    per_call = 1e6 / options.calls
    print(
        f"{options.backend}: {wall * per_call:.1f} µs wall, "
        f"{cpu * per_call:.1f} µs of the parent's CPU and "
        f"{children * per_call:.1f} µs of the workers' per round trip; "
        f"idle for 1 s: {idle * 1e3:.1f} ms of CPU in the parent, "
        f"{idle_children * 1e3:.1f} ms in the workers"
    )


def _children_cpu() -> float:
    """CPU seconds of this process's live children (the workers), all told."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


if __name__ == "__main__":
    main()
