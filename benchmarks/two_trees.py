"""Two source trees of executors against each other, run in turn.

Usage::

    git archive <old commit> | tar -x -C /tmp/before
    git archive HEAD | tar -x -C /tmp/after
    python benchmarks/two_trees.py /tmp/before /tmp/after \\
        --backends process,queue,thread --figures roundtrip,map --rounds 3

Each measurement runs in a fresh process with ``PYTHONPATH=<tree>/src``,
the two trees alternating (before, after, before, after ...), so a drift of
the machine's speed weighs on both alike. On a shared machine the same tree
measured twice can move by half; a figure from one pair of runs says
little, the median over several says more. Prints, per backend and figure,
the median of each tree, its range, and after/before.

Figures (each the median of its samples within one run):

* ``roundtrip``: ``submit(noop).result()``, one call at a time (µs);
* ``map``: ``list(map(identity, range(20_000)))`` (million items/s);
* ``startup``: create, one task, ``shutdown(wait=True)`` (µs);
* ``payload``: ``submit(identity, a)`` for a 5 MB NumPy array (ms).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

FIGURES = {
    "roundtrip": ("µs", "lower"),
    "map": ("M items/s", "higher"),
    "startup": ("µs", "lower"),
    "payload": ("ms", "lower"),
}


def _measure(backend: str, figure: str) -> float:
    import executors
    from executors.testing import tasks

    workers = 1 if backend == "inline" else 2
    if figure == "startup":
        samples = []
        # A process pool takes ~100 ms to start; a thread pool ~0.2 ms.
        cycles = 300 if backend in ("thread", "inline") else 12
        for _ in range(cycles):
            start = time.perf_counter()
            executor = executors.create(backend, max_workers=workers)
            executor.submit(tasks.noop).result()
            executor.shutdown(wait=True)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples[cycles // 10 :]) * 1e6
    with executors.create(backend, max_workers=workers) as executor:
        if figure == "roundtrip":
            for _ in range(200):
                executor.submit(tasks.noop).result()
            samples = []
            for _ in range(3000):
                start = time.perf_counter()
                executor.submit(tasks.noop).result()
                samples.append(time.perf_counter() - start)
            return statistics.median(samples) * 1e6
        if figure == "map":
            list(executor.map(tasks.identity, range(2_000)))
            rates = []
            for _ in range(15):
                start = time.perf_counter()
                list(executor.map(tasks.identity, range(20_000)))
                rates.append(20_000 / (time.perf_counter() - start))
            return statistics.median(rates) / 1e6
        import numpy as np

        array = np.random.default_rng(0).random(5_000_000 // 8)
        executor.submit(tasks.identity, array).result()
        samples = []
        for _ in range(30):
            start = time.perf_counter()
            executor.submit(tasks.identity, array).result()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1e3


def _run(tree: str, backend: str, figure: str) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.join(tree, "src"))
    done = subprocess.run(
        [sys.executable, __file__, "--child", backend, figure],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", nargs="?")
    parser.add_argument("after", nargs="?")
    parser.add_argument("--backends", default="process,mp_pool,queue,joblib,thread")
    parser.add_argument("--figures", default=",".join(FIGURES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "FIGURE"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(*args.child)))
        return
    if not (args.before and args.after):
        parser.error("give the two trees")
    print(f"before: {args.before}  after: {args.after}  rounds: {args.rounds}")
    for backend in args.backends.split(","):
        for figure in args.figures.split(","):
            unit, better = FIGURES[figure]
            results: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                results["before"].append(_run(args.before, backend, figure))
                results["after"].append(_run(args.after, backend, figure))
            before = statistics.median(results["before"])
            after = statistics.median(results["after"])
            ratio = after / before
            worse = ratio > 1.1 if better == "lower" else ratio < 1 / 1.1
            improved = ratio < 1 / 1.1 if better == "lower" else ratio > 1.1
            verdict = "worse" if worse else "better" if improved else ""
            print(
                f"{backend:8s} {figure:9s} {unit:10s} "
                f"before {before:8.3g} [{min(results['before']):.3g}.."
                f"{max(results['before']):.3g}]  "
                f"after {after:8.3g} [{min(results['after']):.3g}.."
                f"{max(results['after']):.3g}]  "
                f"after/before {ratio:5.2f} {verdict}",
                flush=True,
            )


if __name__ == "__main__":
    main()
