"""Every example in ``examples/`` runs, on every available backend.

Each example runs as a real subprocess, the way a user runs it, in its own
session so that a hung example and everything it started can be killed as a
group. Every process it starts carries a marker in its environment, and each
test checks that none of them outlives the example.
"""

from __future__ import annotations

import ast
import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import executors
from executors.testing import BOUND

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# Seconds one example may run: Dask starts a local cluster per executor,
# which takes seconds on a busy 2-core machine.
RUN_BOUND = 240.0
# A server stops on SIGINT in well under a second; this is for a loaded
# machine, not a hang.
STOP_BOUND = 60.0
# Socket operations against the echo server.
NET_BOUND = 4 * BOUND
MARKER_VAR = "EXECUTORS_EXAMPLE_TEST"

_INFOS = {info.name: info for info in executors.list_backends() if info.available}
BACKENDS = sorted(_INFOS)

pytestmark = pytest.mark.timeout(2 * RUN_BOUND)


def quick_on(*quick: str) -> list[Any]:
    """Every backend; ``quick`` ones in the quick run, the rest under ``-m slow``.

    Each run is a fresh interpreter and backend, seconds apiece. The quick
    run gives each example a backend with process isolation and one
    without (the two branches of its checks), spread so that every backend
    runs some example; ``-m slow`` runs each example on all the others.
    """
    return [
        pytest.param(name, id=name, marks=() if name in quick else pytest.mark.slow)
        for name in BACKENDS
    ]


def capabilities(backend: str) -> executors.Capabilities:
    caps = _INFOS[backend].capabilities
    assert caps is not None
    return caps


# -- running an example --------------------------------------------------


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            mine = proc.environ().get(MARKER_VAR) == marker
            if mine and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def assert_no_leftovers(marker: str, pid: int) -> None:
    """Every process the example started is gone (bounded wait)."""
    deadline = time.monotonic() + BOUND
    left = _marked(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _marked(marker)
    if left:
        described = [(p.pid, " ".join(p.cmdline())[:120]) for p in left]
        for p in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        _kill_group(pid)
        pytest.fail(f"processes left behind by the example: {described}")


def _start(script: str, *args: str, marker: str) -> subprocess.Popen[str]:
    # PYTHONFAULTHANDLER: a program that hangs dumps its threads' stacks
    # on SIGABRT, for the failure's message.
    env = {
        **os.environ,
        MARKER_VAR: marker,
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
    }
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        start_new_session=True,
    )


def run_example(script: str, *args: str, stdin: str = "") -> str:
    """Run an example to the end; return its stdout (it must exit 0)."""
    marker = uuid.uuid4().hex
    proc = _start(script, *args, marker=marker)
    try:
        out, err = proc.communicate(stdin, timeout=RUN_BOUND)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"{script} {args} hung\nstdout:\n{out}\nstderr:\n{err}")
    assert proc.returncode == 0, f"{script} {args} failed\n{out}\n{err}"
    assert_no_leftovers(marker, proc.pid)
    return out


def line_with(prefix: str, out: str) -> str:
    for line in out.splitlines():
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting with {prefix!r} in:\n{out}")


# -- the classic walk-through ----------------------------------------------


def run_one_process_per_task(script: str, backend: str) -> str:
    """Run the walk-through ``script``: each of its two sections runs tasks
    0 to 4, off the main process where the backend isolates them, the second
    in a pool of at most two. Its output."""
    out = run_example(script, "--backend", backend, "--seconds", "0.2")
    main_pid = int(line_with("main process: pid ", out).rsplit(" ", 1)[1])
    sections = out.split("== ")[1:]
    assert len(sections) == 2, out
    for section in sections:
        ran = re.findall(r"task (\d) ran in pid (\d+)", section)
        assert sorted(int(n) for n, _ in ran) == [0, 1, 2, 3, 4], out
        pids = {int(pid) for _, pid in ran}
        if capabilities(backend).process_isolation:
            assert main_pid not in pids, out
        else:
            assert pids == {main_pid}, out
    pool_pids = set(re.findall(r"task \d ran in pid (\d+)", sections[1]))
    assert len(pool_pids) <= 2, out
    return out


@pytest.mark.parametrize("backend", quick_on("process", "thread"))
def test_one_process_per_task(backend: str) -> None:
    out = run_one_process_per_task("one_process_per_task.py", backend)
    assert "one per task: 5 tasks" in out
    assert "pool of " in out


@pytest.mark.parametrize("backend", quick_on("mp_pool", "inline"))
def test_sync_vs_async(backend: str) -> None:
    out = run_example("sync_vs_async.py", "--backend", backend, "--seconds", "0.2")
    main_pid = int(line_with("main process: pid ", out).rsplit(" ", 1)[1])
    for mode in ("synchronous", "asynchronous"):
        line = line_with(f"{mode}: [", out)
        results = ast.literal_eval(line.partition(": ")[2].rpartition(" in ")[0])
        assert [n for n, _ in results] == [0, 1, 2, 3, 4], out
        pids = {pid for _, pid in results}
        if capabilities(backend).process_isolation:
            assert main_pid not in pids, out
        else:
            assert pids == {main_pid}, out
    assert "all 5 submitted after" in out


@pytest.mark.parametrize("backend", quick_on("joblib", "thread"))
def test_shutdown_wait(backend: str) -> None:
    out = run_example("shutdown_wait.py", "--backend", backend, "--seconds", "0.5")
    waited = line_with("shutdown(wait=True) returned", out)
    assert waited.endswith("with 4 of 4 tasks finished"), out
    returned = line_with("shutdown(wait=False) returned", out)
    finished = int(re.search(r"with (\d) of 4", returned).group(1))  # type: ignore[union-attr]
    if capabilities(backend).runs_concurrently:
        # Four half-second tasks on two workers need a second: a shutdown
        # that returns "at once" cannot have seen them all finish.
        assert finished < 4, out
    else:
        assert finished == 4, out
    assert out.count("cannot schedule new futures after shutdown") == 2, out
    assert line_with("results after shutdown(wait=True)", out).endswith("[0, 1, 4, 9]")
    assert line_with("results after shutdown(wait=False)", out).endswith("[0, 1, 4, 9]")


@pytest.mark.parametrize("backend", quick_on("queue", "inline"))
def test_compare_pools(backend: str) -> None:
    out = run_example("compare_pools.py", "--backend", backend, "--quick")
    assert "| backend | runs on |" in out
    row = line_with(f"| {backend} |", out)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 9, row
    assert cells[3].endswith(" ms"), row
    assert cells[4].endswith(" ms"), row
    assert cells[6].endswith("x"), row


# -- streaming and asyncio -------------------------------------------------


@pytest.mark.parametrize("backend", quick_on("dask", "thread"))
def test_streaming(backend: str) -> None:
    out = run_example("streaming.py", "--backend", backend, "--quick")
    expected_sum = sum(x * x for x in range(2000))
    assert f"sum of squares = {expected_sum}" in out
    lazy = line_with("lazy map:", out)
    took, read = map(int, re.findall(r"(\d+) (?:results|items)", lazy)[:2])
    assert took == 1000
    assert took <= read <= 1000 + 100, lazy
    unordered = ast.literal_eval(line_with("unordered:", out).partition(": ")[2])
    assert sorted(unordered) == [0.0, 0.1, 0.2, 0.3]
    assert line_with("ordered:", out).endswith("[0.3, 0.0, 0.2, 0.1]")
    assert line_with("lambda:", out).endswith("[10, 11, 12, 13, 14]")
    try:
        import tqdm  # noqa: F401
    except ImportError:
        assert (
            'progress: skipped: progress=True needs tqdm: pip install "executors[progress]"'
            in out
        )
    else:
        assert "progress: 2000 items" in out


@pytest.mark.parametrize("backend", quick_on("celery", "inline"))
def test_asyncio_map(backend: str) -> None:
    out = run_example("asyncio_map.py", "--backend", backend, "--seconds", "0.2")
    assert "submit: 144" in out
    assert "gather: [0, 1, 4, 9, 16, 25]" in out
    assert re.findall(r"^map: (\d+)$", out, re.MULTILINE) == ["0", "1", "4", "9", "16"]
    assert "map_unordered: [0, 1, 4, 9, 16]" in out
    assert "cancel: " in out


# -- the echo server -----------------------------------------------------


class Server:
    """``echo_server.py`` running as a subprocess, its output drained."""

    def __init__(self, backend: str, *args: str) -> None:
        self.marker = uuid.uuid4().hex
        self.proc = _start(
            "echo_server.py",
            "--backend",
            backend,
            "--port",
            "0",
            *args,
            marker=self.marker,
        )
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        try:
            first = self.lines.get(timeout=RUN_BOUND)
        except queue.Empty:
            pytest.fail(f"the server printed nothing for {RUN_BOUND} s")
        #: None when the server exited instead of listening (see refused()).
        self.banner = first
        self.port = 0
        if first is not None:
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)$", first)
            assert match, f"unexpected first line {first!r}; stderr: {self.stderr}"
            self.port = int(match.group(1))

    def refused(self) -> str | None:
        """If the server exited at start-up: its stderr (it must exit 1)."""
        if self.banner is not None:
            return None
        self.proc.wait(BOUND)
        assert self.proc.returncode == 1, self.proc.returncode
        deadline = time.monotonic() + BOUND
        while not self.stderr and time.monotonic() < deadline:
            time.sleep(0.05)
        assert_no_leftovers(self.marker, self.proc.pid)
        return "".join(self.stderr)

    def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def next_line(self, bound: float) -> str:
        try:
            line = self.lines.get(timeout=bound)
        except queue.Empty:
            pytest.fail(f"the server printed nothing for {bound} s")
        assert line is not None, f"the server exited: {''.join(self.stderr)}"
        return line

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> str:
        """Stop with SIGINT (Ctrl-C); return its last line; check it is clean."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(STOP_BOUND)
        except subprocess.TimeoutExpired:
            # Where it hangs: faulthandler prints every thread's stack.
            self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(BOUND)
            _kill_group(self.proc.pid)
            time.sleep(0.5)  # the stderr thread reads the rest
            pytest.fail(
                f"the echo server did not stop on SIGINT within {STOP_BOUND} s; "
                f"its stderr:\n{''.join(self.stderr)}"
            )
        assert self.proc.returncode == 0, "".join(self.stderr)
        last = self.next_line(BOUND)
        assert_no_leftovers(self.marker, self.proc.pid)
        return last

    def kill(self) -> None:
        if self.alive():
            _kill_group(self.proc.pid)
            self.proc.wait(BOUND)


@pytest.fixture
def server_factory() -> Iterator[Any]:
    started: list[Server] = []

    def start(backend: str, *args: str) -> Server:
        server = Server(backend, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


class Client:
    """A line-oriented connection to the echo server."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), NET_BOUND)
        self.file = self.sock.makefile("rwb")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        return self.file.readline()

    def ask(self, message: bytes) -> bytes:
        self.send_raw(message + b"\n")
        line = self.reply()
        assert line.endswith(b"\n"), f"connection closed after {message!r}"
        return line[:-1]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _client_session(
    port: int, index: int, barrier: threading.Barrier, errors: list[str]
) -> None:
    client = Client(port)
    try:
        # Everybody connected before anybody speaks: the server holds
        # ten open connections at once.
        barrier.wait(NET_BOUND)
        for j in range(5):
            message = f"client {index} message {j} ünïcödé"
            got = client.ask(message.encode())
            if got != message.upper().encode():
                errors.append(f"{message!r} -> {got!r}")
    finally:
        client.close()


def _classic_client(
    port: int, index: int, barrier: threading.Barrier, errors: list[str]
) -> None:
    """The classic client, exactly: raw ``send``, then one ``recv(1024)``."""
    with socket.create_connection(("127.0.0.1", port), NET_BOUND) as sock:
        barrier.wait(NET_BOUND)
        for j in range(5):
            message = f"client {index} raw {j} ünïcödé".encode()
            sock.send(message)
            got = sock.recv(1024)
            if got != message.decode().upper().encode():
                errors.append(f"{message!r} -> {got!r}")


def _ten_at_once(
    port: int,
    session: Callable[[int, int, threading.Barrier, list[str]], None],
    who: str,
) -> None:
    """Ten ``session(port, index, barrier, errors)`` at once, a thread each.

    A session that raises aborts the barrier, so that none waits for it.
    """
    barrier = threading.Barrier(10)
    errors: list[str] = []

    def run(index: int) -> None:
        try:
            session(port, index, barrier, errors)
        except Exception as exc:
            errors.append(f"{who} {index}: {exc!r}")
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RUN_BOUND)
    assert not any(t.is_alive() for t in threads), f"a {who} hung"
    assert not errors, errors


def _ten_clients_at_once(port: int) -> None:
    _ten_at_once(port, _client_session, "client")


def _ten_classic_clients_at_once(port: int) -> None:
    _ten_at_once(port, _classic_client, "classic client")


def _bad_input(port: int) -> None:
    # An empty line gets an empty line; the connection stays usable.
    client = Client(port)
    assert client.ask(b"") == b""
    # Bytes that are not UTF-8: an error reply, then business as usual.
    assert client.ask(b"caf\xe9 \xff\xfe").startswith(b"ERROR message is not UTF-8")
    assert client.ask(b"still here") == b"STILL HERE"
    # No terminator, ending in a cut character that never completes: "caf"
    # is answered at once, the cut byte once the server stops waiting for
    # the rest of its character.
    client.send_raw(b"caf\xe9")
    assert client.reply().startswith(b"CAFERROR message is not UTF-8")
    # A character cut between two sends is put together first.
    client.send_raw("ü".encode()[:1])
    time.sleep(0.05)
    client.send_raw("ü".encode()[1:] + b"\n")
    assert client.reply() == "Ü\n".encode()
    client.close()

    # Disconnect mid-message, and right after a full message, before the
    # reply is sent.
    for data in (b"half a mess", b"gone before the reply\n"):
        client = Client(port)
        client.send_raw(data)
        client.close()

    # A reset instead of an orderly close.
    client = Client(port)
    client.send_raw(b"reset me")
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    client.close()

    # Input far longer than one read: answered piece by piece, in full,
    # while it is still being sent (the server never holds all of it).
    client = Client(port)
    big = b"x" * (300 * 1024) + b"\n"
    sender = threading.Thread(target=client.send_raw, args=(big,))
    sender.start()
    assert client.reply() == big.upper()
    sender.join(NET_BOUND)
    assert client.ask(b"after") == b"AFTER"
    client.close()


def _still_serving(server: Server) -> None:
    _ten_clients_at_once(server.port)
    out = run_example(
        "echo_client.py", "--port", str(server.port), "hello", "wörld", "a b c"
    )
    assert out.splitlines() == ["HELLO", "WÖRLD", "A B C"]
    out = run_example(
        "echo_client.py", "--port", str(server.port), "--raw", "hello", "raw wörld"
    )
    assert out.splitlines() == ["HELLO", "RAW WÖRLD"]
    out = run_example(
        "echo_client.py", "--port", str(server.port), stdin="hi there\n\nagain\nquit\n"
    )
    assert ">>: " in out
    assert "HI THERE" in out
    assert "AGAIN" in out


def _serves_every_client_then_stops(server: Server) -> None:
    """Both kinds of client, ten at once, and bad input; then still serving."""
    _ten_classic_clients_at_once(server.port)
    _ten_clients_at_once(server.port)
    _bad_input(server.port)
    assert server.alive()
    # Still serving after all of it, the shipped client included.
    _still_serving(server)
    last = server.stop()
    assert last.startswith("echo server stopped after")


@pytest.mark.parametrize("backend", quick_on("process", "thread"))
def test_echo_server(backend: str, server_factory: Any) -> None:
    server = server_factory(backend, "--delay", "0.02")
    assert server.refused() is None
    _serves_every_client_then_stops(server)


@pytest.mark.parametrize("backend", quick_on("mp_pool", "thread"))
def test_echo_server_classic_mode(backend: str, server_factory: Any) -> None:
    """One worker per connection: ten clients on two workers still all get served."""
    # Every read of at most 1 KiB is one task here: the 300 KiB message of
    # _bad_input is 300 of them, six seconds at the other test's delay.
    # Five milliseconds a message still keep both workers busy while the
    # other eight clients wait for one.
    server = server_factory(backend, "--mode", "classic", "--delay", "0.005")
    refusal = server.refused()
    if refusal is not None:
        # Only a backend that pickles its arguments may refuse (threads can
        # always share a socket), and it must say why.
        assert capabilities(backend).process_isolation
        assert "cannot pass a socket to a worker" in refusal, refusal
        return
    assert "one worker per connection" in (server.banner or "")
    _serves_every_client_then_stops(server)


# -- the same walk-through, written for multiprocessing.Pool ----------------


@pytest.mark.parametrize("backend", quick_on("queue", "inline"))
def test_pool_one_process_per_task(backend: str) -> None:
    run_one_process_per_task("pool_one_process_per_task.py", backend)


@pytest.mark.parametrize("backend", quick_on("joblib", "thread"))
def test_pool_sync_vs_async(backend: str) -> None:
    out = run_example("pool_sync_vs_async.py", "--backend", backend, "--seconds", "0.2")
    assert "<executors.Pool state=RUN" in out
    for mode in ("synchronous", "asynchronous"):
        line = line_with(f"{mode}: [", out)
        results = ast.literal_eval(line.partition(": ")[2].rpartition(" in ")[0])
        assert [n for n, _ in results] == [0, 1, 2, 3, 4], out


@pytest.mark.parametrize("backend", quick_on("process", "inline"))
def test_pool_shutdown_wait(backend: str) -> None:
    out = run_example("pool_shutdown_wait.py", "--backend", backend, "--seconds", "0.5")
    assert line_with("close() + join() returned", out).endswith("with 4 of 4"), out
    assert line_with("results:", out).endswith("[0, 1, 4, 9]"), out
    assert "a new apply() now raises ValueError: Pool not running" in out
    outcomes = ast.literal_eval(
        line_with("terminate() + join() returned", out).partition(": ")[2]
    )
    assert len(outcomes) == 4, out
    if capabilities(backend).runs_concurrently:
        # Four half-second tasks on two workers: terminate() stops the
        # ones queued (and, on process backends, the running ones).
        assert any(not o.isdigit() for o in outcomes), out
    else:
        assert outcomes == ["0", "1", "4", "9"], out
