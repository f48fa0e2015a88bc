"""The ``queue`` backend does not trust the lengths in a worker's frames.

A task runs inside the worker and can write to the worker's result pipe
itself (an inherited descriptor, a C library, a thread, on purpose). Each
test here runs a task that does exactly that, writing a forged 29-byte
frame header (:data:`executors.backends.queue._wire.HEADER`), and checks
that only that task fails, with a :class:`~executors.WorkerCrashedError`
naming the bad frame, that the caller allocated nothing the header
announced, and that the executor goes on running the next tasks. Before
the fix, a header announcing 1.5 GiB made the caller allocate it, then wait
for ever for the body; an absurd one raised in the manager thread and broke
the whole pool.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
from collections.abc import Callable, Iterator
from multiprocessing import Pipe
from typing import Any

import psutil
import pytest

from conftest import backend_factory
from executors import WorkerCrashedError
from executors._outcome import dumps_apart
from executors.backends.queue import _board
from executors.backends.queue import _wire as wire
from executors.backends.queue._wire import HEADER, RESULT, BadFrameError, Channel
from executors.testing import BOUND, tasks

GiB = 1024**3
MiB = 1024**2
#: The caller's resident memory may grow this much while a forged header is
#: handled (a test-run's noise, far below what any header announces).
RSS_SLACK = 200 * MiB


def forger(header: bytes, then: float = 0.0, value: Any = None) -> Callable[[], Any]:
    """A task that writes ``header`` to its worker's result pipe."""

    def forge() -> Any:
        import sys
        import time

        # The worker's loop (worker._Runner) is up the stack: its outbox
        # is the result pipe.
        frame = sys._getframe(1)
        while frame is not None:
            runner = frame.f_locals.get("self")
            if runner is not None and hasattr(runner, "outbox"):
                break
            frame = frame.f_back
        else:
            raise AssertionError("no worker loop up the stack")
        fd = runner.outbox.fileno()
        os.write(fd, header)
        time.sleep(then)
        return value

    return forge


def header(
    kind: int = RESULT,
    nbuf: int = 0,
    task_id: int = 1,
    value: float = 0.0,
    length: int = 0,
) -> bytes:
    return HEADER.pack(kind, nbuf, task_id, value, length)


@pytest.fixture
def executor() -> Iterator[Any]:
    ex = backend_factory("queue")(max_workers=2)
    try:
        yield ex
    finally:
        # A pool that still trusted a header may be stuck reading a body
        # that never comes: its workers' deaths (end-of-file) free it.
        with contextlib.suppress(Exception):
            ex.kill_workers()
        ex.shutdown(wait=True)


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _assert_bad_frame_fails_only_its_task(
    executor: Any, task: Callable[[], Any]
) -> None:
    # Both workers busy, so that the forged task shares the pool with others.
    others = [executor.submit(tasks.sleep_and_return, 0.3, i) for i in range(4)]
    victim = executor.submit(task)
    with pytest.raises(WorkerCrashedError, match="bad frame") as caught:
        victim.result(timeout=BOUND)
    assert "result pipe" in str(caught.value)
    assert [f.result(timeout=BOUND) for f in others] == list(range(4))
    # The pool goes on, with a replaced worker.
    after = [executor.submit(tasks.add, i, 1) for i in range(20)]
    assert [f.result(timeout=BOUND) for f in after] == list(range(1, 21))
    assert list(executor.map(tasks.add, range(50), range(50), chunksize=5)) == [
        2 * i for i in range(50)
    ]


def test_a_header_announcing_gigabytes_allocates_nothing(executor: Any) -> None:
    executor.submit(tasks.noop).result(timeout=BOUND)  # started, warmed up
    before = _rss()
    # The task then sleeps: it is still running when its header is read.
    task = forger(header(length=3 * GiB // 2), then=1.0)
    _assert_bad_frame_fails_only_its_task(executor, task)
    grew = _rss() - before
    assert grew < RSS_SLACK, f"the caller grew by {grew / MiB:.0f} MiB"


@pytest.mark.parametrize(
    "forged",
    [
        # "-1" as a signed length: every unsigned field at its largest.
        pytest.param(header(length=2**64 - 1), id="length-minus-one"),
        pytest.param(header(length=2**63), id="length-2**63"),
        pytest.param(header(nbuf=2**32 - 1), id="buffers-2**32-1"),
        pytest.param(header(nbuf=3), id="buffer-lengths-not-sent"),
        pytest.param(header(kind=0), id="kind-0"),
        pytest.param(header(kind=255), id="kind-255"),
        pytest.param(header(value=float("nan")), id="duration-nan"),
        pytest.param(header(value=-1.0), id="duration-negative"),
        pytest.param(b"\xff" * HEADER.size, id="all-ones"),
        pytest.param(os.urandom(HEADER.size), id="random"),
        # Part of a header, then nothing: the pool must not wait for the rest.
        pytest.param(header(length=10)[:10], id="half-a-header"),
        # A well-formed, empty result: it is still not the worker's own.
        pytest.param(header(length=0), id="empty-frame"),
    ],
)
@pytest.mark.slow
def test_an_absurd_header_fails_only_its_task(executor: Any, forged: bytes) -> None:
    _assert_bad_frame_fails_only_its_task(executor, forger(forged, then=0.5))


def test_a_header_forged_as_the_task_returns(executor: Any) -> None:
    # No sleep: the worker sends the task's own result right behind the
    # forged header, and the forged length covers it.
    _assert_bad_frame_fails_only_its_task(executor, forger(header(length=64)))


def test_a_bad_frame_in_a_map_fails_only_its_item(executor: Any) -> None:
    bad = forger(header(length=GiB), then=0.5)

    def item(x: int) -> int:
        if x == 7:
            bad()
        return x

    results = executor.map(item, range(20), chunksize=4)
    got = []
    with pytest.raises(WorkerCrashedError, match="bad frame"):
        got.extend(results)
    assert got == list(range(7))
    assert list(executor.map(tasks.identity, range(20), chunksize=4)) == list(range(20))


def test_frames_of_any_legitimate_size_still_pass(executor: Any) -> None:
    # The bound is what the worker posted it sends: exact, so large results
    # (in the pickle, and out of band) are never refused.
    big = executor.submit(tasks.big_payload, 40 * MiB).result(timeout=BOUND)
    assert len(big) == 40 * MiB

    def out_of_band(n: int) -> pickle.PickleBuffer:
        return pickle.PickleBuffer(bytearray(n))

    buffers = executor.map(out_of_band, [24 * MiB, 100 * 1024, 5 * MiB])
    assert [len(b) for b in buffers] == [24 * MiB, 100 * 1024, 5 * MiB]
    values = list(executor.map(tasks.identity, range(100_000), chunksize=5_000))
    assert values == list(range(100_000))


# -- the channel alone, on both transports -----------------------------------


@pytest.fixture(params=["raw", "connection"])
def channels(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Channel, Channel, memoryview]]:
    # "connection" is the Windows path (pipes as handles), run here on POSIX.
    monkeypatch.setattr(wire, "_RAW_FDS", request.param == "raw")
    reader, writer = Pipe(duplex=False)
    board = memoryview(bytearray(64)).cast("q")
    sender, receiver = Channel(writer), Channel(reader)
    sender.post_sent_to(board, _board.SENT)
    receiver.check_against(board, _board.SENT)
    try:
        yield sender, receiver, board
    finally:
        reader.close()
        writer.close()


def test_every_frame_a_worker_sends_is_received(
    channels: tuple[Channel, Channel, memoryview],
) -> None:
    sender, receiver, _ = channels
    payloads = [None, b"x" * 100_000, pickle.PickleBuffer(bytearray(200_000))]

    def send_all() -> None:
        for task_id, payload in enumerate(payloads):
            body, buffers = dumps_apart(payload)
            sender.send(RESULT, task_id, 0.5, body, buffers)

    # Frames larger than the pipe: sent from another thread, as a worker
    # sends while the parent reads.
    thread = threading.Thread(target=send_all, daemon=True)
    thread.start()
    received = [receiver.recv() for _ in payloads]
    thread.join(BOUND)
    assert [m.task_id for m in received] == [0, 1, 2]
    values = [wire.loads(m.body, m.buffers) for m in received]
    assert values[0] is None
    assert values[1] == b"x" * 100_000
    assert bytes(values[2]) == bytes(200_000)


@pytest.mark.parametrize("length", [0, 100, 2**40])
def test_bytes_the_worker_did_not_post_are_refused(
    channels: tuple[Channel, Channel, memoryview], length: int
) -> None:
    sender, receiver, _ = channels
    sender.send(wire.READY, 0)
    receiver.recv()
    # Written beside the channel, as a task would: nothing posted covers it.
    # (Through the Connection's own framing where frames travel in it: its
    # length prefix is the stdlib's to check.)
    if wire._RAW_FDS:
        os.write(sender.fileno(), header(length=length))
    else:
        sender.conn.send_bytes(header(length=length))
    with pytest.raises(BadFrameError, match="the worker had sent 0 more bytes"):
        receiver.recv()
