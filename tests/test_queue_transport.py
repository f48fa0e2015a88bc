"""The ``queue`` backend's transport never deadlocks (issue 15).

One test (at least) per way the pool used to hang or break:

1. a write to a full task pipe under the pool lock (pipes fill by pages);
2. a frame torn by an exception from a signal handler (Ctrl-C);
3. a task that kills every worker while it is received (a respawn storm);
4. descriptors past 1023 (``select.select``);
5. a ``BaseException`` while a result or an exception is unpickled;
6. a timeout that kept running while a finished task's result was sent.

Every crash is real (a memory cap, ``os._exit``), every pipe a real pipe.
Each test that hung the old pool unwedges it on failure (killing its
workers, or breaking it), so that it fails within its bound instead of
hanging the run.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import pytest

from conftest import backend_factory
from executors import TaskTimeoutError, WorkerCrashedError, with_options
from executors._outcome import dumps_apart as dumps
from executors.backends.queue import _triage
from executors.backends.queue._wire import CALL, HEADER, Channel
from executors.testing import BOUND, ContractBase, tasks

ExecutorFactory = Callable[..., Any]

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Linux pipe sizes (F_SETPIPE_SZ)"
)

# Linux fcntl commands (the fcntl module names them from Python 3.10 only).
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
PAGE = 4096
# The pipe size Linux gives a user past fs.pipe-user-pages-soft: 2 pages.
SMALL_PIPE = 2 * PAGE
MiB = 1024 * 1024


@pytest.fixture
def executor_factory() -> ExecutorFactory:
    return backend_factory("queue")


# -- helpers ------------------------------------------------------------------


def frame_size(fn: Any, *args: Any) -> int:
    """Bytes the frame of ``submit(fn, *args)`` takes in a task pipe."""
    body, buffers = dumps((fn, args, {}))
    return HEADER.size + len(body) + sum(8 + b.nbytes for b in buffers)


def arg_for_frame(size: int) -> bytes:
    """An argument whose ``identity`` frame takes exactly ``size`` bytes."""
    # Measured with an argument of about that size: pickle's framing of a
    # bytes object grows with its length.
    probe = b"a" * size
    arg = b"a" * (2 * size - frame_size(tasks.identity, probe))
    assert frame_size(tasks.identity, arg) == size
    return arg


def start_both_workers(executor: Any) -> None:
    deadline = time.monotonic() + BOUND
    while len(set(executor.map(tasks.sleep_then_pid, [0.3] * 2))) < 2:
        assert time.monotonic() < deadline, "the second worker never started"


def worker_pids(executor: Any) -> list[int]:
    # Without the pool lock: the old pool held it for ever when it hung.
    return [w.process.pid for w in list(executor._pool.workers.values())]


def unwedge(executor: Any) -> None:
    """Kill the workers of a hung pool, so that it can be shut down."""
    for pid in worker_pids(executor):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def slow_result(seconds: float, nbytes: int) -> Callable[[], bytes]:
    def fn() -> bytes:
        time.sleep(seconds)
        return b"r" * nbytes

    return fn


def returns_slow_to_pickle(seconds: float) -> Callable[[Any], Any]:
    """A task that returns at once a value whose pickling takes ``seconds``."""

    def fn(_: Any = None) -> Any:
        class SlowToPickle:
            def __reduce__(self) -> Any:
                time.sleep(seconds)
                return (str, ("sent",))

        return SlowToPickle()

    return fn


def returns_exiting_on_load(code: int) -> Callable[[], Any]:
    """A task whose result raises ``SystemExit(code)`` when unpickled."""

    def fn() -> Any:
        class ExitsOnLoad:
            def __reduce__(self) -> Any:
                return (sys.exit, (code,))

        return ExitsOnLoad()

    return fn


def raises_exiting_on_load(code: int) -> Callable[[], Any]:
    """A task whose exception raises ``SystemExit(code)`` when unpickled.

    Only outside the worker: the worker checks that an exception survives
    a pickling round trip before it sends it.
    """

    def fn() -> Any:
        here = os.getpid()
        load = f"__import__('sys').exit({code}) if __import__('os').getpid() != {here} else None"

        class ExitsOnLoadError(Exception):
            def __reduce__(self) -> Any:
                return (eval, (load,))

        raise ExitsOnLoadError("unloadable")

    return fn


def cap_memory(log: str, headroom: int) -> Callable[[], None]:
    """An initializer: log the start, then cap the worker's address space."""

    def init() -> None:
        with open(log, "a") as f:
            f.write("x")
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
        used = pages * os.sysconf("SC_PAGE_SIZE")
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (used + headroom, hard))

    return init


# -- 1. a full task pipe: pages, not bytes ------------------------------------


@linux_only
class TestPagesNotBytes:
    def test_a_frame_that_fits_by_bytes_but_not_by_pages_never_blocks(self) -> None:
        # Three 2.5 KB frames fit an 8 KiB pipe by their bytes (7.5 KB), but
        # a write that does not fit in the last page's free space takes a new
        # page: three frames need three pages, and the pipe has two.
        reader, writer = Pipe(duplex=False)
        try:
            import fcntl

            fcntl.fcntl(writer.fileno(), F_SETPIPE_SZ, SMALL_PIPE)
            assert fcntl.fcntl(writer.fileno(), F_GETPIPE_SZ) == SMALL_PIPE
            channel = Channel(writer)
            channel.make_nonblocking()
            size = 2500
            assert 3 * size <= SMALL_PIPE and 2 * size > PAGE
            args = [arg_for_frame(size)[:-1] + bytes([i]) for i in range(3)]
            bodies = [dumps((tasks.identity, (arg,), {}))[0] for arg in args]
            start = time.monotonic()
            rests = [
                channel.send_nowait(CALL, i + 1, 0.0, b) for i, b in enumerate(bodies)
            ]
            assert time.monotonic() - start < 1.0, "a write blocked"
            assert rests[:2] == [None, None]
            rest = rests[2]
            assert rest is not None, "the third frame fit: pages are not as assumed"
            # Room comes back as the worker reads; the rest goes out whole.
            inbox = Channel(reader)
            first = inbox.recv()
            assert (first.kind, first.task_id) == (CALL, 1)
            assert channel.write_nowait(rest)
            received = [inbox.recv() for _ in range(2)]
            assert [m.task_id for m in received] == [2, 3]
            assert [bytes(m.body) for m in received] == bodies[1:]
        finally:
            reader.close()
            writer.close()


@linux_only
class TestFullPipeUnderLoad(ContractBase):
    @pytest.mark.timeout(60)
    def test_a_full_task_pipe_never_stops_the_pool(
        self, make_executor: ExecutorFactory
    ) -> None:
        # The pipes Linux gives once a user has many pipes open: 8 KiB. Both
        # workers are busy; the pool sends tiny tasks ahead to both, by the
        # byte count, and the third one to a worker needs a third page. The
        # old pool wrote it with the lock held and blocked; the manager then
        # blocked on the lock with the other worker's result, and nobody read
        # the first worker's large result: everything hung for ever.
        import fcntl

        executor = make_executor(max_workers=2)
        start_both_workers(executor)
        for _ in range(30):  # tiny tasks: the pool sends up to 8 ahead
            executor.submit(tasks.noop).result(timeout=BOUND)
        pool = executor._pool
        with pool.lock:
            workers = list(pool.workers.values())
            for worker in workers:
                for channel in (worker.tasks, worker.results):
                    fcntl.fcntl(channel.fileno(), F_SETPIPE_SZ, SMALL_PIPE)
                worker.capacity = fcntl.fcntl(worker.tasks.fileno(), F_GETPIPE_SZ)
        assert [w.capacity for w in workers] == [SMALL_PIPE] * 2
        big = executor.submit(slow_result(0.6, 64 * 1024))
        small = executor.submit(tasks.sleep_and_return, 0.2, "small")
        with pool.lock:
            running = max(item.task.size for w in workers for item in w.held)
        # Three frames per worker fit by bytes, each over half a page.
        filler = (SMALL_PIPE - running) // 3
        assert filler > PAGE // 2
        arg = arg_for_frame(filler)
        fillers: list[Future[Any]] = []

        def submit_fillers() -> None:
            for _ in range(6):
                fillers.append(executor.submit(tasks.identity, arg))

        submitter = threading.Thread(target=submit_fillers, daemon=True)
        submitter.start()
        submitter.join(BOUND)
        if submitter.is_alive():
            unwedge(executor)
            submitter.join(BOUND)
            pytest.fail("submit() blocked on a full pipe: the pool hung")
        try:
            assert big.result(timeout=BOUND) == b"r" * 64 * 1024
            assert small.result(timeout=BOUND) == "small"
            assert [f.result(timeout=BOUND) for f in fillers] == [arg] * 6
        finally:
            if not big.done():
                unwedge(executor)
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2


# -- 2. a frame torn by Ctrl-C --------------------------------------------------


@linux_only
class TestInterruptedWrite(ContractBase):
    @pytest.mark.timeout(90)
    @pytest.mark.parametrize("delay", [0.0005, 0.002, 0.01])
    def test_ctrl_c_during_a_large_submit_never_hangs(
        self, make_executor: ExecutorFactory, delay: float
    ) -> None:
        # A KeyboardInterrupt from a signal handler lands in the main thread
        # while submit() hands a 64 MiB argument to the worker. The old pool
        # wrote the frame in the caller: the exception left half of it in
        # the pipe, the worker waited for the rest for ever, and every later
        # task and shutdown() hung.
        executor = make_executor(max_workers=1)
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        # Out of band: pickled without a copy, so the signal lands while the
        # frame is written rather than while it is pickled.
        payload = pickle.PickleBuffer(bytearray(64 * MiB))
        fired: list[bool] = []

        def interrupt(signum: int, frame: Any) -> None:
            fired.append(True)
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGALRM, interrupt)
        futs: list[Future[Any]] = []
        interrupted = False
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, delay)
                futs.append(executor.submit(len, payload))
                # The alarm lands by here at the latest.
                deadline = time.monotonic() + BOUND
                while not fired and time.monotonic() < deadline:
                    time.sleep(0.001)
            except KeyboardInterrupt:
                interrupted = True
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert interrupted
        try:
            after = executor.submit(tasks.add, 2, 3)
            assert after.result(timeout=BOUND) == 5, "the worker waits for ever"
            for fut in futs:
                # Written whole, or its worker replaced and the task sent again.
                exc = fut.exception(timeout=BOUND)
                assert exc is None or isinstance(exc, WorkerCrashedError), exc
                if exc is None:
                    assert fut.result() == 64 * MiB
        except BaseException:
            unwedge(executor)
            raise
        done = threading.Event()

        def shut_down() -> None:
            executor.shutdown(wait=True)
            done.set()

        threading.Thread(target=shut_down, daemon=True).start()
        if not done.wait(BOUND):
            unwedge(executor)
            pytest.fail("shutdown(wait=True) hung after the interrupted submit")


# -- 3. a task that kills its worker while it is received ------------------------


@linux_only
class TestEarlyDeaths(ContractBase):
    @pytest.mark.timeout(90)
    def test_a_task_too_large_for_the_worker_fails_without_a_storm(
        self, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        # The worker's address space is capped 48 MiB above what it uses: a
        # 64 MiB argument kills it while it reads the frame, before the task
        # starts. The old pool blamed nothing, sent the task again, and
        # started and lost workers for ever.
        log = tmp_path / "starts"
        executor = make_executor(
            max_workers=2, initializer=cap_memory(str(log), 48 * MiB)
        )
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        victim = executor.submit(len, bytearray(64 * MiB))
        others = [executor.submit(tasks.sleep_and_return, 0.05, i) for i in range(6)]
        try:
            exc = victim.exception(timeout=BOUND)
        except TimeoutError:
            # Stop the storm so that the executor can be shut down.
            executor._pool.break_pool(lambda: BrokenExecutor("test over"))
            raise
        assert isinstance(exc, WorkerCrashedError), exc
        assert "before it started" in str(exc)
        assert "2 times" in str(exc)
        assert exc.exitcode is not None
        assert [f.result(timeout=BOUND) for f in others] == list(range(6))
        assert executor.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4
        deaths = _triage.EARLY_DEATHS_BEFORE_FAILED
        # Two workers, one replacement per death, at most one more started
        # while the last death is noticed.
        assert len(log.read_text()) <= 2 + deaths + 1

    def test_an_argument_that_exits_while_unpickled_fails_after_a_bound(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(max_workers=2)
        victim = executor.submit(tasks.identity, tasks.ExitsOnUnpickle())
        others = [executor.submit(tasks.identity, i) for i in range(6)]
        exc = victim.exception(timeout=BOUND)
        assert isinstance(exc, WorkerCrashedError), exc
        assert exc.exitcode == 9
        assert "before it started" in str(exc)
        assert [f.result(timeout=BOUND) for f in others] == list(range(6))
        assert executor.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4

    def test_a_chunk_that_kills_its_worker_while_received(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(max_workers=2)
        items = [1, 2, tasks.ExitsOnUnpickle(), 4]
        got: list[Any] = []
        with pytest.raises(WorkerCrashedError, match="before it started"):
            for value in executor.map(
                tasks.identity, items, chunksize=4, timeout=BOUND
            ):
                got.append(value)
        assert got == []
        assert executor.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4


# -- 4. descriptors past 1023 ---------------------------------------------------

MANY_FILES_PROGRAM = """
import os, resource, sys, threading, time
import executors
from executors.testing import tasks


def send_then_exit(seconds, delay):
    def fn():
        time.sleep(seconds)
        threading.Timer(delay, os._exit, (0,)).start()
        return "sent"
    return fn


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    files = [open(os.devnull) for _ in range(1100)]
    assert files[-1].fileno() > 1024
    ex = executors.create("queue", max_workers=2, mp_context=sys.argv[1])
    print(ex.submit(tasks.add, 1, 2).result(timeout=15), flush=True)
    # A done-callback keeps the manager thread busy while a worker sends a
    # result and exits: the manager then finds the result and the exit at
    # once, and drains the dead worker's pipe before it forgets it.
    busy = ex.submit(tasks.sleep_and_return, 0.05)
    busy.add_done_callback(lambda _: time.sleep(0.5))
    print(ex.submit(send_then_exit(0.2, 0.05)).result(timeout=15), flush=True)
    crash = ex.submit(tasks.exit_abruptly, 3)
    others = [ex.submit(tasks.identity, i) for i in range(5)]
    print(type(crash.exception(timeout=15)).__name__, flush=True)
    print([f.result(timeout=15) for f in others], flush=True)
    print(ex.submit(tasks.add, 2, 3).result(timeout=15), flush=True)
    ex.shutdown()
"""


@linux_only
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_a_process_with_more_than_1024_descriptors(tmp_path: Path, method: str) -> None:
    # select.select refuses descriptors past 1023: the old pool broke when
    # it drained a dead worker's pipe, and fork workers (which inherit the
    # parent's descriptor numbers) died waiting for their first task.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 2048")
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(MANY_FILES_PROGRAM))
    proc = subprocess.run(
        [sys.executable, str(path), method],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:5] == [
        "3",
        "sent",
        "WorkerCrashedError",
        "[0, 1, 2, 3, 4]",
        "5",
    ], proc.stdout + proc.stderr


# -- 5. BaseException while decoding --------------------------------------------


class TestDecoding(ContractBase):
    @pytest.mark.parametrize(
        "fn",
        [returns_exiting_on_load(3), raises_exiting_on_load(3)],
        ids=["result", "exception"],
    )
    def test_system_exit_while_unpickling_fails_only_its_task(
        self, make_executor: ExecutorFactory, fn: Any
    ) -> None:
        executor = make_executor(max_workers=2)
        others = [executor.submit(tasks.sleep_and_return, 0.1, i) for i in range(4)]
        fut = executor.submit(fn)
        exc = fut.exception(timeout=BOUND)
        assert isinstance(exc, SystemExit), exc
        assert exc.code == 3
        assert [f.result(timeout=BOUND) for f in others] == list(range(4))
        assert executor.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4

    def test_system_exit_while_unpickling_a_chunk_value(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(max_workers=2)
        fn = returns_exiting_on_load(4)
        with pytest.raises(SystemExit):
            list(executor.map(lambda _: fn(), range(3), timeout=BOUND))
        assert executor.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4


# -- 6. the timeout stops when the function returns -------------------------------


class TestTimeoutStopsAtReturn(ContractBase):
    def test_a_slow_to_send_result_is_not_a_timeout(
        self, make_executor: ExecutorFactory
    ) -> None:
        # The function returns at once; pickling its result takes 1.5 s, past
        # the 0.5 s timeout. The old pool timed the send too and killed it.
        executor = make_executor(max_workers=2, task_timeout=0.5)
        fut = executor.submit(returns_slow_to_pickle(1.5))
        assert fut.result(timeout=BOUND) == "sent"
        slow = executor.submit(tasks.sleep_and_return, 30)
        assert type(slow.exception(timeout=BOUND)) is TaskTimeoutError

    def test_in_a_map(self, make_executor: ExecutorFactory) -> None:
        executor = make_executor(max_workers=2)
        fn = with_options(returns_slow_to_pickle(1.5), timeout=0.5)
        assert list(executor.map(fn, range(2), chunksize=2, timeout=BOUND)) == [
            "sent",
            "sent",
        ]
