"""The ``queue`` manager polls briefly before it sleeps, and only then.

A thread woken from sleep starts tens of microseconds late on a virtual
machine, a third of a round trip; so while its recent waits were short and
a CPU is left over by the busy workers, the manager polls its pipes for up
to ``POLL_SECONDS`` first. These tests pin the three promises around it:
nothing ready is missed while polling, a deadline is never overrun by the
poll, and an idle pool goes back to sleep (no CPU spent while nothing runs).
"""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

import executors
from executors.backends.queue import _manager
from executors.backends.queue._manager import POLL_SECONDS, Manager, _Selector
from executors.testing import tasks

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pipe() -> Any:
    reader, writer = os.pipe()
    selector = _Selector()
    selector.register(reader, "reader")
    yield selector, writer
    selector.close()
    os.close(reader)
    os.close(writer)


def test_what_is_ready_before_polling_returns_at_once(pipe: Any) -> None:
    selector, writer = pipe
    os.write(writer, b"x")
    start = time.monotonic()
    assert selector.select(None, poll=5.0) == ["reader"]
    assert time.monotonic() - start < 1.0


def test_what_arrives_while_polling_is_seen(pipe: Any) -> None:
    selector, writer = pipe
    threading.Timer(0.05, os.write, (writer, b"x")).start()
    assert selector.select(None, poll=5.0) == ["reader"]


def test_what_arrives_after_polling_wakes_the_sleep(pipe: Any) -> None:
    selector, writer = pipe
    threading.Timer(0.2, os.write, (writer, b"x")).start()
    assert selector.select(None, poll=0.01) == ["reader"]


def test_the_poll_never_outlasts_the_timeout(pipe: Any) -> None:
    selector, _ = pipe
    start = time.monotonic()
    assert selector.select(0.05, poll=5.0) == []
    took = time.monotonic() - start
    assert 0.04 <= took < 1.0


def _manager_with(workers_holding: list[int], cpus: int, short_waits: float) -> Any:
    manager = Manager.__new__(Manager)
    workers = {
        slot: SimpleNamespace(held=[object()] * held)
        for slot, held in enumerate(workers_holding)
    }
    manager.pool = SimpleNamespace(workers=workers)
    manager.cpus = cpus
    manager.short_waits = short_waits
    return manager


@pytest.mark.parametrize(
    ("holding", "cpus", "short_waits", "polls"),
    [
        ([1, 0], 2, 0.9, True),  # a round trip: one worker busy, waits short
        ([0, 0], 2, 0.9, True),  # between two round trips
        ([1, 1], 2, 0.9, False),  # every CPU has a busy worker
        ([3, 2, 1], 2, 0.9, False),
        ([1, 0], 1, 0.9, False),  # one CPU: polling would take the worker's
        ([1, 0], 2, 0.3, False),  # most waits are long: polling would not pay
        ([1, 0], 2, 0.0, False),  # a new manager, before its first waits
    ],
)
def test_when_the_manager_polls(
    holding: list[int], cpus: int, short_waits: float, polls: bool
) -> None:
    seconds = _manager_with(holding, cpus, short_waits)._poll_seconds()
    assert seconds == (POLL_SECONDS if polls else 0.0)


def _thread_cpu_seconds(native_id: int) -> float:
    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return float(thread.user_time + thread.system_time)
    raise AssertionError("the manager thread is gone")


def test_an_idle_pool_stops_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every CPU counts as free, so the manager polls during the round trips
    # whatever this machine's size and load.
    monkeypatch.setattr(_manager, "cpu_count", lambda: 64)
    with executors.create("queue", max_workers=2) as executor:
        for value in range(300):
            assert executor.submit(tasks.identity, value).result() == value
        manager = executor._manager  # type: ignore[attr-defined]
        assert manager is not None
        time.sleep(0.1)  # well past POLL_SECONDS
        before = _thread_cpu_seconds(manager.native_id)
        time.sleep(1.0)
        spent = _thread_cpu_seconds(manager.native_id) - before
        # A manager left polling would spend the whole second.
        assert spent < 0.1
