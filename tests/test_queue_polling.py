"""The ``queue`` manager and workers poll briefly before they sleep, and only then.

A thread woken from sleep starts tens of microseconds late on a virtual
machine, a third of a round trip; so while its recent waits were short and
its thread does not wait for a CPU (and, for the manager, a CPU is left over
by the busy workers), the manager polls its pipes, and a worker its task
pipe, for up to ``POLL_SECONDS`` first. These tests pin the promises around
it: nothing ready is missed while polling, a deadline is never overrun by
the poll, a CPU that something else wants is given back, and an idle pool
goes back to sleep (no CPU spent while nothing runs), in the manager and in
the workers.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

import executors
from executors.backends.queue import _polling
from executors.backends.queue._board import FIELDS, POLLING, RETURNED, STARTED, Board
from executors.backends.queue._manager import Manager, _Selector
from executors.backends.queue._polling import (
    CROWDED_CHECK_SECONDS,
    MAX_POLL_BACKOFF_SECONDS,
    POLL_BACKOFF_SECONDS,
    POLL_SECONDS,
    PollPolicy,
)
from executors.backends.queue._wire import CALL, POLL_AFTER, Channel, Message
from executors.backends.queue._worker import _Runner
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


def _manager_with(
    busy: int, cpus: int, short_waits: float, polling_workers: int = 0
) -> Any:
    """A manager whose pool has ``busy`` workers holding a task, and
    ``polling_workers`` more about to poll."""
    manager = Manager.__new__(Manager)
    workers = {
        slot: SimpleNamespace(held=[object()] if slot < busy else [])
        for slot in range(busy + polling_workers + 1)
    }
    manager.pool = SimpleNamespace(
        workers=workers, board=SimpleNamespace(polling=lambda: polling_workers)
    )
    manager.polling = PollPolicy()
    manager.polling.cpus = cpus
    manager.polling.short_waits = short_waits
    return manager


@pytest.fixture
def cpu_wait(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """The seconds the polling thread has waited for a CPU, as it will read them."""
    waited: list[float | None] = [0.0]
    monkeypatch.setattr(_polling, "cpu_wait_seconds", lambda: waited[0])
    return waited


@pytest.mark.parametrize(
    ("busy", "polling_workers", "cpus", "short_waits", "polls"),
    [
        (0, 0, 2, 0.9, True),  # between round trips, no worker polls
        (1, 0, 2, 0.9, True),  # a task runs; its worker will not poll
        (0, 1, 2, 0.9, False),  # the worker polls, the caller runs meanwhile
        (1, 1, 2, 0.9, False),
        (1, 1, 4, 0.9, True),
        (3, 0, 4, 0.9, True),
        (4, 0, 4, 0.9, False),  # every CPU has a busy worker
        (0, 0, 1, 0.9, False),  # one CPU: polling would take the worker's
        (1, 0, 4, 0.3, False),  # most waits are long: polling would not pay
        (1, 0, 4, 0.0, False),  # a new manager, before its first waits
    ],
)
def test_when_the_manager_polls(
    cpu_wait: list[float | None],
    busy: int,
    polling_workers: int,
    cpus: int,
    short_waits: float,
    polls: bool,
) -> None:
    manager = _manager_with(busy, cpus, short_waits, polling_workers)
    assert manager._poll_seconds() == (POLL_SECONDS if polls else 0.0)


class _Looks:
    """A manager on the test's clock, asked after stretches of given shares.

    Each stretch lasts ``seconds``; its thread waited for a CPU for
    ``waited`` of it and polled for ``polled`` of it.
    """

    def __init__(self, cpu_wait: list[float | None], monkeypatch: Any) -> None:
        self.now = 100.0
        monkeypatch.setattr(_polling.time, "monotonic", lambda: self.now)
        self.cpu_wait = cpu_wait
        self.manager = _manager_with(0, cpus=2, short_waits=0.9)

    def first(self) -> float:
        return float(self.manager._poll_seconds())

    def after(
        self, waited: float, polled: float = 0.5, seconds: float = CROWDED_CHECK_SECONDS
    ) -> float:
        self.now += seconds
        self.cpu_wait[0] += waited * seconds  # type: ignore[operator]
        self.manager.polling.polled_seconds += polled * seconds
        return float(self.manager._poll_seconds())

    def backed_off_for(self) -> float:
        began = self.now
        while self.manager._poll_seconds() == 0.0:
            self.now += 0.01
        return self.now - began


@pytest.fixture
def looks(cpu_wait: list[float | None], monkeypatch: pytest.MonkeyPatch) -> _Looks:
    return _Looks(cpu_wait, monkeypatch)


def test_a_manager_kept_waiting_for_a_cpu_stops_polling_for_a_while(
    looks: _Looks,
) -> None:
    assert looks.first() == POLL_SECONDS
    # One burst (its workers starting): it goes on polling.
    assert looks.after(waited=0.3) == POLL_SECONDS
    assert looks.after(waited=0.01) == POLL_SECONDS
    # A CPU-bound program beside it: the thread waits 30% of the time.
    assert looks.after(waited=0.3) == POLL_SECONDS
    assert looks.after(waited=0.3) == 0.0
    assert looks.backed_off_for() == pytest.approx(POLL_BACKOFF_SECONDS, abs=0.02)
    # After the back-off it polls, and looks afresh; alone, it waits 1%.
    for _ in range(3):
        assert looks.after(waited=0.01) == POLL_SECONDS


def test_back_offs_grow_while_the_cpu_stays_wanted(looks: _Looks) -> None:
    assert looks.first() == POLL_SECONDS
    assert looks.after(waited=0.3) == POLL_SECONDS
    assert looks.after(waited=0.3) == 0.0  # twice in a row
    assert looks.backed_off_for() == pytest.approx(POLL_BACKOFF_SECONDS, abs=0.02)
    # Wanted still: once is enough now, and each back-off is twice as long.
    for factor in (2, 4, 8, 8):
        assert looks.after(waited=0.3) == 0.0
        backoff = min(factor * POLL_BACKOFF_SECONDS, MAX_POLL_BACKOFF_SECONDS)
        assert looks.backed_off_for() == pytest.approx(backoff, abs=0.02)
    # Free again: it polls on, and the next back-off takes two looks again.
    assert looks.after(waited=0.01) == POLL_SECONDS
    assert looks.after(waited=0.3) == POLL_SECONDS
    assert looks.after(waited=0.3) == 0.0
    assert looks.backed_off_for() == pytest.approx(POLL_BACKOFF_SECONDS, abs=0.02)


def test_a_wait_for_a_cpu_while_it_hardly_polled_stops_no_polling(
    looks: _Looks,
) -> None:
    # A map: every CPU busy with the pool's own work, and the pipes never
    # empty (a poll returns at once). A back-off from then would carry over
    # into the round trips that follow it.
    assert looks.first() == POLL_SECONDS
    for _ in range(5):
        assert looks.after(waited=0.5, polled=0.01) == POLL_SECONDS


def test_a_look_long_after_the_last_is_a_first_one(looks: _Looks) -> None:
    assert looks.first() == POLL_SECONDS
    for _ in range(3):
        # Each look a second after the last, over a stretch that waited and
        # polled half the time: none of them is judged.
        stretch = 10 * CROWDED_CHECK_SECONDS
        assert looks.after(waited=0.5, polled=0.5, seconds=stretch) == POLL_SECONDS


def test_a_manager_that_cannot_tell_never_polls(
    cpu_wait: list[float | None],
) -> None:
    cpu_wait[0] = None
    assert _manager_with(1, cpus=4, short_waits=0.9)._poll_seconds() == 0.0


def test_the_cpu_wait_is_read_at_most_every_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []

    def read() -> float:
        reads.append(1)
        return 0.0

    monkeypatch.setattr(_polling, "cpu_wait_seconds", read)
    manager = _manager_with(0, cpus=2, short_waits=0.9)
    for _ in range(100):
        manager._poll_seconds()
    assert len(reads) == 1


def test_cpu_wait_seconds_grows_with_the_threads_wait() -> None:
    waited = _polling.cpu_wait_seconds()
    if not sys.platform.startswith("linux"):
        assert waited is None
        return
    assert waited is not None and waited >= 0.0
    later = _polling.cpu_wait_seconds()
    assert later is not None and later >= waited


def _thread_cpu_seconds(native_id: int) -> float:
    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return float(thread.user_time + thread.system_time)
    raise AssertionError("the manager thread is gone")


def _poll_whatever_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPUs to spare and a longer poll: whatever this machine's size and
    load, the manager (and a forked worker) polls during round trips."""
    monkeypatch.setattr(_polling, "cpu_count", lambda: 64)
    monkeypatch.setattr(_polling, "cpu_wait_seconds", lambda: 0.0)
    monkeypatch.setattr(_polling, "POLL_SECONDS", 0.05)


def test_an_idle_pool_stops_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    _poll_whatever_the_machine(monkeypatch)
    with executors.create("queue", max_workers=2) as executor:
        for value in range(100):
            assert executor.submit(tasks.identity, value).result() == value
        manager = executor._manager  # type: ignore[attr-defined]
        assert manager is not None
        assert manager.polling.short_waits >= 0.5  # it was polling
        time.sleep(0.3)  # well past POLL_SECONDS
        before = _thread_cpu_seconds(manager.native_id)
        time.sleep(1.0)
        spent = _thread_cpu_seconds(manager.native_id) - before
        # A manager left polling would spend the whole second.
        assert spent < 0.1


def _workers_cpu_seconds(executor: Any) -> float:
    workers = list(executor._pool.workers.values())
    return sum(_process_cpu_seconds(worker.process.pid) for worker in workers)


@pytest.fixture
def forked_queue(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A queue executor whose two workers have started, with a patched policy.

    Forked: the workers start with this process's patched modules.
    """
    if sys.platform != "linux":
        pytest.skip("forked workers, /proc")
    _poll_whatever_the_machine(monkeypatch)
    with executors.create("queue", max_workers=2, mp_context="fork") as executor:
        both = [executor.submit(tasks.sleep_and_return, 0.2, i) for i in range(2)]
        assert [future.result() for future in both] == [0, 1]
        yield executor


def test_a_worker_polls_between_round_trips_and_sleeps_once_idle(
    forked_queue: Any,
) -> None:
    executor = forked_queue
    for value in range(20):
        assert executor.submit(tasks.identity, value).result() == value
    before = _workers_cpu_seconds(executor)
    for value in range(20):
        assert executor.submit(tasks.identity, value).result() == value
        time.sleep(0.01)  # a short wait: the worker polls through it
    polled = _workers_cpu_seconds(executor) - before
    time.sleep(0.3)  # well past POLL_SECONDS
    before = _workers_cpu_seconds(executor)
    time.sleep(1.0)
    idle = _workers_cpu_seconds(executor) - before
    # Polling through twenty gaps of 10 ms takes a CPU for most of 0.2 s; a
    # worker left polling would spend the whole idle second.
    assert polled > 0.05
    assert idle < 0.05


@pytest.fixture
def runner(cpu_wait: list[float | None]) -> Any:
    """A worker's runner on a board of three rows, its own the first."""
    board = Board(3)
    reader, writer = multiprocessing.Pipe(duplex=False)
    runner = _Runner(Channel(reader), Channel(writer), board, 0, None)
    runner.polling.short_waits = 1.0
    yield runner
    board.close()
    reader.close()
    writer.close()


def _task(value: float) -> Message:
    return Message(CALL, 1, value, b"", [])


@pytest.mark.parametrize(
    ("cpus", "running", "polling", "polls"),
    [
        (2, 0, 0, True),  # this worker and the parent: two CPUs
        (2, 1, 0, False),  # another worker runs a task: none left
        (2, 0, 1, False),  # another worker polls
        (3, 1, 0, True),
        (3, 1, 1, False),
        (1, 0, 0, False),
    ],
)
def test_a_worker_polls_only_while_a_cpu_is_left_to_the_parent(
    runner: Any, cpus: int, running: int, polling: int, polls: bool
) -> None:
    runner.polling.cpus = cpus
    view = runner.board.view
    for row in range(1, 1 + running):
        view[row * FIELDS + STARTED] = time.monotonic_ns()
    for row in range(1 + running, 1 + running + polling):
        view[row * FIELDS + STARTED] = RETURNED
        view[row * FIELDS + POLLING] = 1
    assert runner.polls_after(_task(POLL_AFTER)) is polls
    # Never after a task sent while other workers held theirs.
    assert runner.polls_after(_task(0.0)) is False


def test_a_worker_does_not_poll_after_a_task_sent_beside_others(
    forked_queue: Any,
) -> None:
    # Only a task sent to a pool where no other worker holds one is a round
    # trip's (POLL_AFTER): the tasks of a map, sent while others run, are not.
    executor = forked_queue
    pids = set()
    workers = {w.process.pid: w for w in executor._pool.workers.values()}  # type: ignore[attr-defined]
    before = {pid: _process_cpu_seconds(pid) for pid in workers}
    for _ in range(20):
        first = executor.submit(tasks.sleep_and_return, 0.005, "first")
        beside = executor.submit(tasks.get_pid)
        assert first.result() == "first"
        pids.add(beside.result())
        time.sleep(0.01)
    spent = {pid: _process_cpu_seconds(pid) - before[pid] for pid in workers}
    assert len(pids) == 1, "the second task of a pair did not always go to one worker"
    (other,) = pids
    assert spent[other] < 0.05


def _process_cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)
