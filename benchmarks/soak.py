"""Soak test: a million tiny tasks through each backend.

Reports, per backend, the parent's RSS growth while the tasks run (the goal
is at most 50 MB) and whether open file descriptors and threads return to
their starting count after ``shutdown()``. Each backend runs in its own
subprocess, so one backend's imports and caches never count against another.

Usage::

    python benchmarks/soak.py                      # every available backend
    python benchmarks/soak.py --tasks 100000 --backends process,thread
    python benchmarks/soak.py --json soak.json     # also write the figures

The tasks go through ``map`` in chunks (``--chunksize``, default 1000) with a
bounded ``buffersize`` (the lazy mode): the eager mode would hold the whole
input in memory by design, which is not what a soak measures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

#: The goal for the parent's RSS growth over a soak, in MB.
RSS_GOAL_MB = 50.0


def _fds() -> int:
    import psutil

    return int(psutil.Process().num_fds())


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def soak_one(
    backend: str, tasks_n: int, buffersize: int, chunksize: int | None, workers: int
) -> dict[str, Any]:
    """Run the soak for one backend in this process; return its figures."""
    import executors
    from executors.testing import tasks

    options: dict[str, Any] = {} if backend == "inline" else {"max_workers": workers}
    # Warm-up: imports, the forkserver, a library's loop thread: what a
    # program pays once, not per task.
    with executors.create(backend, **options) as ex:
        assert list(ex.map(tasks.identity, range(1000), buffersize=1000)) == list(
            range(1000)
        )
    gc.collect()
    fds0, threads0, rss0 = _fds(), threading.active_count(), _rss_mb()

    peak = rss0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.05):
            peak = max(peak, _rss_mb())

    sampler = threading.Thread(target=sample, name="soak-rss-sampler", daemon=True)
    sampler.start()
    start = time.perf_counter()
    total = count = 0
    with executors.create(backend, **options) as ex:
        results = ex.map(
            tasks.identity, range(tasks_n), chunksize=chunksize, buffersize=buffersize
        )
        for value in results:
            total += value
            count += 1
    took = time.perf_counter() - start
    stop.set()
    sampler.join()
    peak = max(peak, _rss_mb())
    assert count == tasks_n, f"{count} results for {tasks_n} tasks"
    assert total == tasks_n * (tasks_n - 1) // 2, "wrong results"

    # Threads and fds may close a moment after shutdown() returns (a
    # finalizer, a daemon helper); give them a few seconds.
    deadline = time.monotonic() + 10
    while True:
        gc.collect()
        fds1, threads1 = _fds(), threading.active_count()
        if (fds1 <= fds0 and threads1 <= threads0) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    rss1 = _rss_mb()
    return {
        "backend": backend,
        "tasks": tasks_n,
        "chunksize": chunksize,
        "buffersize": buffersize,
        "seconds": round(took, 2),
        "tasks_per_second": round(tasks_n / took),
        "rss_start_mb": round(rss0, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_end_mb": round(rss1, 1),
        "rss_growth_mb": round(peak - rss0, 1),
        "fds_before": fds0,
        "fds_after": fds1,
        "threads_before": threads0,
        "threads_after": threads1,
        "ok": peak - rss0 <= RSS_GOAL_MB and fds1 <= fds0 and threads1 <= threads0,
    }


def _available() -> list[str]:
    import executors

    return [info.name for info in executors.list_backends() if info.available]


def _run_child(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--one",
        backend,
        "--tasks",
        str(args.tasks),
        "--buffersize",
        str(args.buffersize),
        "--workers",
        str(args.workers),
        "--chunksize",
        str(args.chunksize),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=args.timeout, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"backend": backend, "error": proc.stderr.strip()[-2000:], "ok": False}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _table(results: list[dict[str, Any]]) -> str:
    head = (
        "| backend | tasks | seconds | tasks/s | RSS start | RSS peak | growth "
        "| fds before/after | threads before/after | ok |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|\n"
    )
    rows = []
    for r in results:
        if "error" in r:
            rows.append(f"| {r['backend']} | error: {r['error'][-200:]!r} |||||||||")
            continue
        rows.append(
            f"| {r['backend']} | {r['tasks']:,} | {r['seconds']} | "
            f"{r['tasks_per_second']:,} | {r['rss_start_mb']} MB | "
            f"{r['rss_peak_mb']} MB | {r['rss_growth_mb']} MB | "
            f"{r['fds_before']}/{r['fds_after']} | "
            f"{r['threads_before']}/{r['threads_after']} | "
            f"{'yes' if r['ok'] else 'NO'} |"
        )
    return head + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument(
        "--tasks", type=int, default=1_000_000, help="tasks per backend"
    )
    parser.add_argument("--backends", help="comma-separated names (default: all)")
    parser.add_argument(
        "--buffersize", type=int, default=10_000, help="map buffersize (items)"
    )
    parser.add_argument(
        "--chunksize", type=int, default=1000, help="items per task (0: automatic)"
    )
    parser.add_argument("--workers", type=int, default=2, help="max_workers")
    parser.add_argument("--timeout", type=float, default=3600, help="s per backend")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.tasks, args.buffersize, args.workers) < 1 or args.chunksize < 0:
        parser.error("--tasks, --buffersize and --workers must be >= 1")
    chunksize = args.chunksize or None

    if args.one:
        result = soak_one(
            args.one, args.tasks, args.buffersize, chunksize, args.workers
        )
        print(json.dumps(result), flush=True)
        return 0

    names = args.backends.split(",") if args.backends else _available()
    results = []
    for name in names:
        print(f"soaking {name} with {args.tasks:,} tasks ...", file=sys.stderr)
        results.append(_run_child(name, args))
    print(_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
