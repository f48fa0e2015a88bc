"""Workers that behave (issue 26), on every backend that declares each item.

The classes select themselves by capability flag; until a backend is wired
(its flags still False) its tests show as skipped. Celery's executors here
each start a private deployment (an existing deployment's workers declare
none of the flags, so the shared-deployment module would skip them all).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import executors
from executors._capabilities import WORKER_FLAGS
from executors._workers import WorkerSettings, parse_size, rss_bytes
from executors._workers._limits import default_threads_per_worker
from executors._workers._slots import Slot
from executors.testing import (
    LogForwardingContract,
    NestedExecutorContract,
    RecyclingContract,
    ThreadLimitContract,
    WorkerFinalizerContract,
    WorkerIdentityContract,
)
from executors.testing.workers import _Collect

BACKENDS = [
    "inline",
    "thread",
    "process",
    "mp_pool",
    "queue",
    "joblib",
    "dask",
    "celery",
]


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestWorkerIdentity(WorkerIdentityContract):
    pass


class TestWorkerFinalizer(WorkerFinalizerContract):
    pass


class TestLogForwarding(LogForwardingContract):
    pass


class TestRecycling(RecyclingContract):
    pass


class TestThreadLimit(ThreadLimitContract):
    pass


class TestNestedExecutor(NestedExecutorContract):
    pass


# -- the docs' table --------------------------------------------------------------


def capability_table() -> str:
    """The table of docs/workers.md, from the built-in backends' flags."""
    from executors import _registry

    lines = [
        "| backend | " + " | ".join(f"`{flag}`" for flag in WORKER_FLAGS) + " |",
        "|---|" + "---|" * len(WORKER_FLAGS),
    ]
    for name in _registry._BUILTINS:
        caps = _registry.backend_class(name).capabilities
        cells = ["yes" if getattr(caps, flag) else "no" for flag in WORKER_FLAGS]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_the_docs_table_matches_the_flags() -> None:
    """On a mismatch, the message holds the table to paste."""
    page = Path(__file__).parents[1] / "docs" / "workers.md"
    text = page.read_text(encoding="utf-8")
    table = text.split("<!-- capability-table -->\n", 1)[1].split("\n<!--", 1)[0]
    assert table == capability_table(), (
        "docs/workers.md's table:\n" + capability_table()
    )


# -- the shared machinery itself ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MB", 512 * 10**6),
        ("1.5GiB", int(1.5 * 2**30)),
        (" 150 mb ", 150 * 10**6),
        ("100", 100),
        (4096, 4096),
        (None, None),
    ],
)
def test_parse_size(text: object, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["12 parsecs", "MB", "-5MB", 0, "0B"])
def test_parse_size_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="max_memory_per_child"):
        parse_size(bad)


def test_parse_size_refuses_other_types() -> None:
    with pytest.raises(TypeError, match="max_memory_per_child"):
        parse_size(1.5)
    with pytest.raises(TypeError):
        parse_size(True)


def test_rss_bytes_grows_with_what_is_kept() -> None:
    before = rss_bytes()
    block = bytearray(64 * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    assert rss_bytes() - before > 32 * 2**20
    del block


def test_default_threads_per_worker() -> None:
    assert default_threads_per_worker(2, 2) == 1
    assert default_threads_per_worker(2, 8) == 4
    assert default_threads_per_worker(16, 8) == 1


def test_settings_check_their_options() -> None:
    with pytest.raises(TypeError, match="finalizer must be callable"):
        WorkerSettings(workers=2, finalizer=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="finalargs must be a tuple"):
        WorkerSettings(workers=2, finalargs=[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threads_per_worker must be >= 1"):
        WorkerSettings(workers=2, threads_per_worker=0)
    with pytest.raises(ValueError, match="threads_per_worker must be an int"):
        WorkerSettings(workers=2, threads_per_worker="many")
    with pytest.raises(TypeError, match="forward_logs must be a bool"):
        WorkerSettings(workers=2, forward_logs=1)  # type: ignore[arg-type]
    assert WorkerSettings(workers=2, in_process=True).threads is None


@pytest.mark.parametrize("files", [False, True], ids=["abstract-socket", "flock"])
def test_slots_are_freed_when_their_holder_dies(files: bool, tmp_path: Path) -> None:
    """A slot held by a killed process is free again; a live holder keeps it."""
    if not files and not sys.platform.startswith("linux"):
        pytest.skip("abstract sockets are Linux's")
    folder = str(tmp_path) if files else None
    token = os.urandom(8).hex()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from executors._workers._slots import Slot\n"
            f"slot = Slot({token!r}, 2, {folder!r})\n"
            "print(slot.try_claim(), flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "0"
        mine = Slot(token, 2, folder)
        assert mine.try_claim() == 1
        other = Slot(token, 2, folder)
        assert other.try_claim() is None
        holder.kill()
        holder.wait()
        assert other.claim(wait=5.0) == 0  # the dead holder's slot
        other.release()
        mine.release()
    finally:
        holder.kill()
        holder.wait()


def test_a_slot_claim_that_cannot_succeed_names_the_cause(tmp_path: Path) -> None:
    token = os.urandom(8).hex()
    folder = None if sys.platform.startswith("linux") else str(tmp_path)
    held = Slot(token, 1, folder)
    assert held.try_claim() == 0
    try:
        with pytest.raises(RuntimeError, match="all 1 worker slots held"):
            Slot(token, 1, held.folder).claim(wait=0.05)
    finally:
        held.release()


def test_a_flush_ends_when_the_listener_hangs_up_mid_flush(tmp_path: Path) -> None:
    """A worker whose caller went away is told at once, not after the bound."""
    from executors._workers._logsend import Forwarder

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "listener"))
    server.listen(1)
    forwarder = Forwarder(str(tmp_path / "listener"), b"\0" * 32, lambda: None)
    peer, _ = server.accept()
    try:
        forwarder.emit(logging.makeLogRecord({"name": "x", "levelno": 20, "msg": "m"}))
        # The listener takes the flush request, then hangs up unanswered.
        hang_up = threading.Timer(0.2, peer.close)
        hang_up.start()
        start = time.monotonic()
        assert forwarder.sync(timeout=5.0) is False
        assert time.monotonic() - start < 2.0
        assert forwarder.sync(timeout=5.0) is False  # and stays broken
        hang_up.join()
    finally:
        forwarder.close()
        peer.close()
        server.close()


def test_the_listener_refuses_a_stranger() -> None:
    """A process without the secret gets no record into the caller's logs."""
    from executors._workers import LogListener
    from executors._workers._logsend import Forwarder

    name = "executors.testing.listener"
    listener = LogListener()
    handler = _Collect()
    records = handler.records
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        stranger = Forwarder(listener.address, b"\0" * 32, lambda: None)
        friend = Forwarder(listener.address, listener.secret, lambda: 7)
        for forwarder, message in ((stranger, "from a stranger"), (friend, "hi")):
            forwarder.emit(
                logging.makeLogRecord({"name": name, "levelno": 20, "msg": message})
            )
        assert friend.sync(timeout=5.0)
        assert not stranger.sync(timeout=5.0)  # its connection was closed
        stranger.close()
        friend.close()
    finally:
        listener.close()
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert [r.getMessage() for r in records] == ["hi"]
    assert getattr(records[0], "worker_id", None) == 7
    assert getattr(records[0], "worker_pid", None) == os.getpid()


def test_a_flood_is_bounded_and_its_drops_counted() -> None:
    """A worker whose caller takes nothing drops records after a short wait."""
    from executors._workers import LogListener
    from executors._workers._logsend import BLOCK_SECONDS, Forwarder

    listener = LogListener()
    forwarder = Forwarder(listener.address, listener.secret, lambda: 0, capacity=10)
    logger = logging.getLogger("executors.testing.congested")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    blocked = logging.getLogger("executors.testing.congested.sink")
    gate = __import__("threading").Event()

    class Slow(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            gate.wait(10)

    slow = Slow()
    blocked.addHandler(slow)
    note = _Collect()
    logging.getLogger("executors.workers").addHandler(note)
    try:
        start = time.monotonic()
        for i in range(5000):
            forwarder.emit(
                logging.makeLogRecord(
                    {"name": blocked.name, "levelno": 40, "msg": f"r{i}"}
                )
            )
        took = time.monotonic() - start
        # One bounded wait at most, not one per record.
        assert took < BLOCK_SECONDS * 4, took
        gate.set()
        assert forwarder.sync(timeout=10.0)
    finally:
        gate.set()
        forwarder.close()
        listener.close()
        blocked.removeHandler(slow)
        logging.getLogger("executors.workers").removeHandler(note)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    dropped = [r.getMessage() for r in note.records]
    assert any("dropped" in message for message in dropped), dropped


def test_no_socket_file_is_left(tmp_path: Path) -> None:
    """On Linux the listener and the slots live in the abstract namespace."""
    if not sys.platform.startswith("linux"):
        pytest.skip("abstract sockets are Linux's")
    settings = WorkerSettings(workers=2)
    spec = settings.spec()
    assert spec.log_address is not None and spec.log_address.startswith("\0")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(spec.log_address)
    probe.close()
    settings.close()
    assert spec.folder is None
    assert executors.worker_id() is None


@pytest.mark.parametrize(
    ("max_tasks", "max_memory", "expected"),
    [
        (4, None, [False, False, False, True]),
        (None, 1, [True, True, True, True]),
    ],
    ids=["max_tasks", "max_memory"],
)
def test_after_task_says_when_to_go_and_warns_the_caller_first(
    max_tasks: int | None, max_memory: int | None, expected: list[bool]
) -> None:
    """The worker side of recycling, through the stdlib's own pool."""
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor

    from executors._bootstrap import WorkerBootstrap
    from executors.testing import worker_tasks

    notices: list[tuple[int, int | None]] = []
    noticed = threading.Event()

    def on_leaving(pid: int, slot: int | None) -> None:
        notices.append((pid, slot))
        noticed.set()

    settings = WorkerSettings(
        workers=1,
        forward_logs=False,
        max_tasks_per_child=max_tasks,
        max_memory_per_child=max_memory,
        on_leaving=on_leaving,
    )
    bootstrap = WorkerBootstrap(os.getpid(), None, (), settings.spec())
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(1, mp_context=context, initializer=bootstrap) as pool:
        found = [
            pool.submit(worker_tasks.finish_task).result(timeout=30) for _ in range(4)
        ]
    settings.close()
    assert [leave for _, leave in found] == expected
    assert noticed.wait(10)
    assert notices == [(found[0][0], 0)]


def test_running_as_restores_the_outer_worker() -> None:
    """inline inside a thread worker: the inner identity while it runs."""
    from executors._workers import WorkerContext, running_as

    outer, inner = WorkerContext(1), WorkerContext(0)
    assert executors.worker_id() is None
    with running_as(outer):
        assert executors.worker_id() == 1
        with running_as(inner):
            assert executors.worker_id() == 0
            executors.worker_state()["x"] = 1
        assert executors.worker_id() == 1
        assert executors.worker_state() == {}
    assert executors.worker_id() is None


def test_a_worker_numbered_by_its_backend_claims_no_slot() -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from executors.testing import worker_tasks

    settings = WorkerSettings(workers=2, forward_logs=False)
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(
        1,
        mp_context=context,
        initializer=worker_tasks.start_as,
        initargs=(settings.spec(), 5),
    ) as pool:
        assert pool.submit(worker_tasks.who).result(timeout=30)[0] == 5
    settings.close()


def test_a_child_forked_by_a_task_is_not_the_worker(tmp_path: Path) -> None:
    """Its exit runs no finalizer, and it writes nothing into the log stream."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from executors._bootstrap import WorkerBootstrap
    from executors.testing import worker_tasks

    handler = _Collect()
    logger = logging.getLogger(worker_tasks.RECORD_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    settings = WorkerSettings(
        workers=1,
        finalizer=worker_tasks.write_finalized,
        finalargs=(str(tmp_path),),
    )
    try:
        bootstrap = WorkerBootstrap(os.getpid(), None, (), settings.spec())
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(1, mp_context=context, initializer=bootstrap) as pool:
            child = pool.submit(worker_tasks.fork_and_log).result(timeout=30)
            worker = pool.submit(worker_tasks.who).result(timeout=30)[1]
        settings.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert [r.getMessage() for r in handler.records] == ["after the fork"]
    finalized = sorted(path.name.split("-")[1] for path in tmp_path.iterdir())
    assert finalized == [str(worker)], (finalized, child)


# -- warm recycling in the stdlib pools (executors._workers._pools) -----------

LIMIT, BLOCK = 150 * 10**6, 50


def _recycling_pool(kind: str, settings: WorkerSettings) -> Any:
    import multiprocessing

    from executors._bootstrap import WorkerBootstrap
    from executors._workers._pools import (
        RecyclingProcessPool,
        SparePoolMixin,
        UntilRecycled,
    )

    context = multiprocessing.get_context("forkserver")
    bootstrap = WorkerBootstrap(os.getpid(), None, (), settings.spec())
    if kind == "process":
        return RecyclingProcessPool(2, mp_context=context, initializer=bootstrap)

    class Pool(SparePoolMixin, multiprocessing.pool.Pool):
        pass

    return Pool(2, bootstrap, (), UntilRecycled(), context=context)


def _in_recycling_pool(kind: str, run: Callable[[Any], Any], **limits: Any) -> Any:
    """``run(pool)`` on the ``kind`` stdlib pool of two workers recycled at
    ``limits``; the pool and its settings are shut down after."""
    holder: list[Any] = []
    settings = WorkerSettings(
        workers=2,
        forward_logs=False,
        on_leaving=lambda pid, slot: (
            holder[0].request_spare() if kind == "pool" else None
        ),
        **limits,
    )
    pool = _recycling_pool(kind, settings)
    holder.append(pool)
    try:
        return run(pool)
    finally:
        if kind == "process":
            pool.shutdown(wait=True)
        else:
            pool.close()
            pool.join()
        settings.close()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exit_pid is 3.11's")
@pytest.mark.parametrize("kind", ["process", "pool"])
def test_memory_recycling_in_the_stdlib_pools(kind: str) -> None:
    """50 MB kept per call, 20 calls, 2 workers, 150MB: the issue's test."""
    from executors.testing import worker_tasks

    def run(pool: Any) -> Any:
        if kind == "process":
            futures = [
                pool.submit(worker_tasks.keep_and_finish, BLOCK) for _ in range(20)
            ]
            return [f.result(timeout=60) for f in futures]
        return pool.map(worker_tasks.keep_and_finish, [BLOCK] * 20, chunksize=1)

    found = _in_recycling_pool(kind, run, max_memory_per_child="150MB")
    pids = {pid for pid, _, _ in found}
    assert len(pids) > 2, "no worker was replaced"
    worst = max(rss for _, rss, _ in found)
    assert worst <= LIMIT + BLOCK * 2**20 + 16 * 2**20, worst
    assert {slot for _, _, slot in found} <= {0, 1}, found


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exit_pid is 3.11's")
@pytest.mark.parametrize("kind", ["process", "pool"])
def test_task_count_recycling_in_the_stdlib_pools(kind: str) -> None:
    from executors.testing import worker_tasks

    def run(pool: Any) -> Any:
        if kind == "process":
            return list(pool.map(worker_tasks.tick_and_finish, [0.001] * 100))
        return pool.map(worker_tasks.tick_and_finish, [0.001] * 100, chunksize=1)

    found = _in_recycling_pool(kind, run, max_tasks_per_child=10)
    per_pid: dict[int, int] = {}
    for _, pid in found:
        per_pid[pid] = per_pid.get(pid, 0) + 1
    assert max(per_pid.values()) <= 10, per_pid
    assert len(per_pid) >= 10, per_pid
    assert {slot for slot, _ in found} <= {0, 1}, found


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exit_pid is 3.11's")
def test_a_recycling_pool_shut_down_without_wait_still_runs_its_backlog() -> None:
    """shutdown(wait=False) drops the pool's references; the manager's remain."""
    from executors.testing import worker_tasks

    settings = WorkerSettings(workers=2, forward_logs=False, max_tasks_per_child=2)
    pool = _recycling_pool("process", settings)
    futures = [pool.submit(worker_tasks.tick_and_finish, 0.01) for _ in range(20)]
    pool.shutdown(wait=False)
    try:
        assert len([f.result(timeout=60) for f in futures]) == 20
    finally:
        pool.shutdown(wait=True)
        settings.close()
