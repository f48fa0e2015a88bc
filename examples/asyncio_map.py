"""Executors from asyncio: await a task, ``async for`` over a map.

``executors.aio`` wraps any executor's futures for the event loop, and ties
cancellation together: cancelling the asyncio task that awaits cancels the
queued work behind it. Run::

    python examples/asyncio_map.py --backend process
"""

from __future__ import annotations

import argparse
import asyncio
import time

import executors
import executors.aio


def slow_square(x: int, seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return x * x


async def demo(ex: executors.Executor, seconds: float) -> None:
    # --8<-- [start:submit]
    # await one task; the event loop stays free meanwhile.
    print(f"submit: {await executors.aio.submit(ex, slow_square, 12)}")
    # --8<-- [end:submit]

    # --8<-- [start:gather]
    # Many tasks at once: gather the awaitables as usual.
    squares = await asyncio.gather(
        *(executors.aio.submit(ex, slow_square, i, seconds) for i in range(6))
    )
    print(f"gather: {squares}")
    # --8<-- [end:gather]

    # --8<-- [start:map]
    # async for over a bounded lazy map, in input order...
    async for value in executors.aio.map(ex, slow_square, range(5), buffersize=4):
        print(f"map: {value}")
    # ...or in completion order.
    seen = [v async for v in executors.aio.map_unordered(ex, slow_square, range(5))]
    print(f"map_unordered: {sorted(seen)}")
    # --8<-- [end:map]

    # --8<-- [start:cancel]
    # Cancelling the awaiting task cancels the work it queued. A timeout is
    # one way to cancel: wait_for cancels the awaiting task when it expires.
    try:
        value = await asyncio.wait_for(
            executors.aio.submit(ex, slow_square, 3, 10 * seconds), timeout=seconds
        )
    except asyncio.TimeoutError:
        print("cancel: gave up waiting; the task was cancelled if still queued")
    else:  # inline: the task ran to the end inside submit()
        print(f"cancel: finished before the timeout: {value}")
    # --8<-- [end:cancel]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--backend", default="process", help="backend name")
    parser.add_argument(
        "--seconds", type=float, default=0.5, help="length of the slow tasks"
    )
    args = parser.parse_args(argv)
    # Every backend takes max_workers (inline too: it runs one task at a time).
    with executors.create(args.backend, max_workers=2) as ex:
        asyncio.run(demo(ex, args.seconds))


if __name__ == "__main__":
    main()
