"""The rich ``map``: lazy and bounded, unordered, auto-chunked, with a bar.

Each section is one feature, and each prints what it shows::

    python examples/streaming.py --backend process
    python examples/streaming.py --backend dask --quick

The sections are included verbatim in ``docs/streaming.md``.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Iterator

import executors


def square(x: int) -> int:
    return x * x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--backend", default="process", help="backend name")
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    args = parser.parse_args(argv)
    n = 2_000 if args.quick else 200_000
    # Every backend takes max_workers (inline too: it runs one task at a time).
    with executors.create(args.backend, max_workers=2) as ex:
        # --8<-- [start:eager]
        # Without buffersize, map keeps the stdlib's semantics: the whole
        # input is read and every task submitted at the call. The chunk size
        # is picked automatically: one item per task on short inputs, chunks
        # that shrink towards the end on long ones.
        total = sum(ex.map(square, range(n)))
        print(f"eager map over {n} items: sum of squares = {total}")
        # --8<-- [end:eager]

        # --8<-- [start:lazy]
        # buffersize=N reads the input lazily and never holds more than N
        # items that have been read but not yet yielded, so an infinite
        # input works and memory stays bounded.
        pulled = 0

        def numbers() -> Iterator[int]:  # infinite; counts what it yields
            nonlocal pulled
            for i in itertools.count():
                pulled += 1
                yield i

        results = ex.map(square, numbers(), buffersize=100)
        first = list(itertools.islice(results, 1_000))
        results.close()  # stop reading; cancels the work not started yet
        print(
            f"lazy map: took {len(first)} results from an infinite input, "
            f"read {pulled} items (at most 1000 + 100)"
        )
        # --8<-- [end:lazy]

        # --8<-- [start:unordered]
        # map_unordered yields each result as soon as it is ready.
        delays = [0.3, 0.0, 0.2, 0.1]
        print(f"unordered: {list(ex.map_unordered(nap, delays))}")
        print(f"ordered:   {list(ex.map(nap, delays))}")
        # --8<-- [end:unordered]

        # --8<-- [start:lambda]
        # Lambdas, closures and functions defined in __main__ travel with
        # cloudpickle, so they work on process backends too.
        offset = 10
        print(f"lambda: {list(ex.map(lambda x: x + offset, range(5)))}")
        # --8<-- [end:lambda]

        # --8<-- [start:progress]
        # progress=True draws a tqdm bar that counts items, not chunks, on
        # stderr. Without tqdm it raises an ImportError naming the extra.
        try:
            done = sum(1 for _ in ex.map(square, range(n), progress=True))
            print(f"progress: {done} items")
        except ImportError as exc:
            print(f"progress: skipped: {exc}")
        # --8<-- [end:progress]


if __name__ == "__main__":
    main()
