"""executors.aio with the thread backend: no worker process needed."""

from __future__ import annotations

import asyncio
import threading

import pytest

import executors
from executors import aio

pytestmark = pytest.mark.timeout(30)


def test_a_submit_waiting_for_max_pending_does_not_block_the_event_loop() -> None:
    release = threading.Event()

    async def main() -> tuple[int, int]:
        with executors.create("thread", max_workers=1, max_pending=1) as ex:
            held = ex.submit(release.wait, 20)
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticking = asyncio.create_task(ticker())
            waiting = asyncio.create_task(aio.submit(ex, pow, 2, 10))
            await asyncio.sleep(0.3)
            seen = ticks
            release.set()
            value = await asyncio.wait_for(waiting, 10)
            ticking.cancel()
            assert held.result(timeout=10) is True
            return seen, value

    try:
        seen, value = asyncio.run(main())
    finally:
        release.set()
    assert value == 1024
    # The loop went on while the submit waited for the held slot.
    assert seen >= 5


def test_a_cancelled_await_cancels_the_task_it_was_waiting_to_submit() -> None:
    first = threading.Event()
    second = threading.Event()
    ran = threading.Event()

    async def main() -> None:
        # One worker, two slots: one task runs, one waits in the queue, and
        # the awaited submit waits for a slot.
        with executors.create("thread", max_workers=1, max_pending=2) as ex:
            running = ex.submit(first.wait, 20)
            queued = ex.submit(second.wait, 20)
            waiting = asyncio.create_task(aio.submit(ex, ran.set))
            await asyncio.sleep(0.2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # A slot frees: the abandoned submit goes through, behind the
            # queued task, and is cancelled there.
            first.set()
            await asyncio.sleep(0.5)
            second.set()
            assert running.result(timeout=10) is True
            assert queued.result(timeout=10) is True

    try:
        asyncio.run(main())
    finally:
        first.set()
        second.set()
    assert not ran.is_set()
