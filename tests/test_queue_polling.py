"""The ``queue`` manager polls briefly before it sleeps, and only then.

A thread woken from sleep starts tens of microseconds late on a virtual
machine, a third of a round trip; so while its recent waits were short, a
CPU is left over by the busy workers and its thread does not wait for one,
the manager polls its pipes for up to ``POLL_SECONDS`` first. These tests
pin the promises around it: nothing ready is missed while polling, a
deadline is never overrun by the poll, a CPU that something else wants is
given back, and an idle pool goes back to sleep (no CPU spent while nothing
runs).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

import executors
from executors.backends.queue import _manager
from executors.backends.queue._manager import (
    CROWDED_CHECK_SECONDS,
    POLL_BACKOFF_SECONDS,
    POLL_SECONDS,
    Manager,
    _Selector,
)
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
    manager.crowded_until = manager.checked_at = manager.waited_for_cpu = 0.0
    manager.was_crowded = False
    return manager


@pytest.fixture
def cpu_wait(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """The seconds the manager's thread has waited for a CPU, as it will read them."""
    waited: list[float | None] = [0.0]
    monkeypatch.setattr(_manager, "cpu_wait_seconds", lambda: waited[0])
    return waited


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
    cpu_wait: list[float | None],
    holding: list[int],
    cpus: int,
    short_waits: float,
    polls: bool,
) -> None:
    seconds = _manager_with(holding, cpus, short_waits)._poll_seconds()
    assert seconds == (POLL_SECONDS if polls else 0.0)


def test_a_manager_kept_waiting_for_a_cpu_stops_polling_for_a_while(
    cpu_wait: list[float | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(_manager.time, "monotonic", lambda: now[0])
    manager = _manager_with([1, 0], cpus=2, short_waits=0.9)

    def look_after(share_waited: float) -> float:
        now[0] += CROWDED_CHECK_SECONDS
        cpu_wait[0] += share_waited * CROWDED_CHECK_SECONDS  # type: ignore[operator]
        return manager._poll_seconds()

    assert manager._poll_seconds() == POLL_SECONDS  # the first look
    # One burst (its workers starting): it goes on polling.
    assert look_after(0.3) == POLL_SECONDS
    assert look_after(0.01) == POLL_SECONDS
    # A CPU-bound program beside it: the thread waits 30% of the time.
    assert look_after(0.3) == POLL_SECONDS
    assert look_after(0.3) == 0.0
    now[0] += POLL_BACKOFF_SECONDS / 2
    assert manager._poll_seconds() == 0.0
    # After the back-off it polls, and looks afresh; alone, it waits 1%.
    now[0] += POLL_BACKOFF_SECONDS / 2
    assert manager._poll_seconds() == POLL_SECONDS
    for _ in range(3):
        assert look_after(0.01) == POLL_SECONDS


def test_a_manager_that_cannot_tell_never_polls(
    cpu_wait: list[float | None],
) -> None:
    cpu_wait[0] = None
    assert _manager_with([1, 0], cpus=2, short_waits=0.9)._poll_seconds() == 0.0


def test_the_cpu_wait_is_read_at_most_every_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []

    def read() -> float:
        reads.append(1)
        return 0.0

    monkeypatch.setattr(_manager, "cpu_wait_seconds", read)
    manager = _manager_with([0, 0], cpus=2, short_waits=0.9)
    for _ in range(100):
        manager._poll_seconds()
    assert len(reads) == 1


def test_cpu_wait_seconds_grows_with_the_threads_wait() -> None:
    waited = _manager.cpu_wait_seconds()
    if not sys.platform.startswith("linux"):
        assert waited is None
        return
    assert waited is not None and waited >= 0.0
    later = _manager.cpu_wait_seconds()
    assert later is not None and later >= waited


def _thread_cpu_seconds(native_id: int) -> float:
    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return float(thread.user_time + thread.system_time)
    raise AssertionError("the manager thread is gone")


def test_an_idle_pool_stops_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    # A machine with CPUs to spare and a longer poll, so the manager polls
    # during the round trips whatever this machine's size and load.
    monkeypatch.setattr(_manager, "cpu_count", lambda: 64)
    monkeypatch.setattr(_manager, "cpu_wait_seconds", lambda: 0.0)
    monkeypatch.setattr(_manager, "POLL_SECONDS", 0.05)
    with executors.create("queue", max_workers=2) as executor:
        for value in range(100):
            assert executor.submit(tasks.identity, value).result() == value
        manager = executor._manager  # type: ignore[attr-defined]
        assert manager is not None
        assert manager.short_waits >= 0.5  # it was polling
        time.sleep(0.3)  # well past POLL_SECONDS
        before = _thread_cpu_seconds(manager.native_id)
        time.sleep(1.0)
        spent = _thread_cpu_seconds(manager.native_id) - before
        # A manager left polling would spend the whole second.
        assert spent < 0.1
