"""The mp_pool backend against raw multiprocessing.Pool, interleaved.

Usage::

    python benchmarks/interleaved_mp_pool.py [--rounds 50] [--workers 2]

The benchmark suite measures each target in its own process, one after
the other; on a shared machine whose speed drifts, two figures taken a
minute apart can differ by half. Here both pools live in one process and
every round measures each case in turn, so a drift weighs on all of them
alike. Prints, for a map of 20,000 no-ops (default chunking and chunksize
10,000, each sample the mean of ten maps) and for ``submit(...).result()``,
the medians and the ratios to raw Pool.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable

import executors
from executors.bench._tasks import noop

ITEMS = 20_000
MAPS_PER_SAMPLE = 10
CALLS_PER_SAMPLE = 200


def _sample_map(run: Callable[[], object]) -> float:
    began = time.perf_counter()
    for _ in range(MAPS_PER_SAMPLE):
        run()
    return (time.perf_counter() - began) / MAPS_PER_SAMPLE


def _sample_calls(call: Callable[[int], object]) -> list[float]:
    times = []
    for i in range(CALLS_PER_SAMPLE):
        began = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    items = list(range(ITEMS))
    context = multiprocessing.get_context("forkserver")
    with (
        context.Pool(args.workers) as pool,
        executors.create("mp_pool", max_workers=args.workers) as ours,
    ):
        pool.map(noop, range(100))
        list(ours.map(noop, range(100)))
        maps: dict[str, Callable[[], object]] = {
            "raw Pool.map, default": lambda: pool.map(noop, items),
            "raw Pool.map, chunksize 10,000": lambda: pool.map(noop, items, 10_000),
            "mp_pool map, default": lambda: list(ours.map(noop, items)),
            "mp_pool map, chunksize 10,000": lambda: list(
                ours.map(noop, items, chunksize=10_000)
            ),
        }
        calls: dict[str, Callable[[int], object]] = {
            "raw apply_async().get()": lambda i: pool.apply_async(noop, (i,)).get(),
            "mp_pool submit().result()": lambda i: ours.submit(noop, i).result(),
        }
        map_times: dict[str, list[float]] = {name: [] for name in maps}
        call_times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, run in maps.items():
                map_times[name].append(_sample_map(run))
            for name, call in calls.items():
                call_times[name] += _sample_calls(call)

    raw_default = statistics.median(map_times["raw Pool.map, default"])
    raw_best = statistics.median(map_times["raw Pool.map, chunksize 10,000"])
    print(f"map of {ITEMS:,} no-ops, {args.workers} workers, {args.rounds} rounds:")
    for name, times in map_times.items():
        took = statistics.median(times)
        print(
            f"  {name:32s} {ITEMS / took / 1e6:5.2f}M tasks/s  "
            f"{raw_default / took:.2f}x raw default  {raw_best / took:.2f}x raw best"
        )
    raw_call = statistics.median(call_times["raw apply_async().get()"])
    print("round trip:")
    for name, times in call_times.items():
        took = statistics.median(times)
        print(f"  {name:32s} {took * 1e6:5.0f} us  {took / raw_call:.2f}x raw")


if __name__ == "__main__":
    main()
