"""The ``dask`` backend at the edges: nothing left running, nothing lost, no door open.

* **No door open.** The local cluster speaks mutual TLS with a certificate
  made for it: another process of this machine that finds its ports can
  neither connect a client (and run code in the caller's process with
  ``run_on_scheduler``) nor talk to a worker or nanny. Everything listens
  on 127.0.0.1, a dashboard given as ``":PORT"`` included. Without
  ``cryptography`` the executor refuses to start insecurely and says why.
* **Ctrl-C while the cluster starts** tears the half-built cluster down:
  no worker, thread or second cluster is left, and the executor stays
  usable with exactly one cluster.
* **Ctrl-C without ``with``**: a program whose ``map`` is interrupted exits
  within seconds, whether SIGINT reaches only it or its whole process group
  (a terminal's Ctrl-C), and leaves no process behind.
* **A killed caller** (SIGKILL) leaves no worker or resource tracker
  behind, its workers busy in tasks (with spawn, Dask's default;
  ``tests/test_parent_death.py`` covers the fork server).

The programs run as real subprocesses in a session of their own, so a
signal to their process group reaches none of the test's processes; every
process they start is killed at the end whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import distributed
import psutil
import pytest
from distributed.security import Security

import executors
from _programs import Program, alive, describe, wait_until_gone
from executors.testing import BOUND, child_processes, tasks, wait_for_no_new_children

#: Seconds within which a program interrupted by Ctrl-C must have exited.
EXIT_BOUND = 5.0
#: Seconds within which the processes of a killed program must be gone.
ORPHAN_BOUND = 2.0
#: A fresh program importing distributed and starting a cluster with spawn,
#: on a loaded 2-core machine.
START_BOUND = 90.0


# -- the harness ---------------------------------------------------------------


@pytest.fixture
def program(tmp_path: Path) -> Iterator[Any]:
    """Start a program from its source text; every one is killed at teardown."""
    started: list[Program] = []

    def start(source: str, *args: str) -> Program:
        path = tmp_path / f"program_{len(started)}.py"
        path.write_text(source)
        started.append(Program(str(path), *args))
        return started[-1]

    yield start
    for running in started:
        running.kill_tree()


def _send_sigint(running: Program, to: str) -> None:
    if to == "group":
        # What a terminal's Ctrl-C does: the program and every process it
        # started (they share its process group) get SIGINT.
        os.killpg(running.proc.pid, signal.SIGINT)
    else:
        os.kill(running.proc.pid, signal.SIGINT)


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    found = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
    return found


# -- no door open ----------------------------------------------------------------

# Another process of this machine that found the ports: it tries a plain
# client (as in `distributed.Client("tcp://127.0.0.1:PORT")`), a TLS client
# with a certificate of its own, and a raw Dask connection either way, on
# every port. A client that connects runs code in the caller's process.
INTRUDER = """
import asyncio, json, os, sys
import distributed
from distributed.comm import connect
from distributed.security import Security

PORTS = json.loads(sys.argv[1])
STRANGER = Security.temporary()


async def client_runs_code(address, **options):
    client = await distributed.Client(
        address, asynchronous=True, timeout=2, set_as_default=False, **options
    )
    try:
        return f"RAN CODE in process {await client.run_on_scheduler(os.getpid)}"
    finally:
        await client.close()


async def comm_opens(address, **options):
    comm = await connect(address, timeout=2, **options)
    await comm.close()
    return "OPEN"


async def attempt(name, coroutine):
    try:
        return name, await asyncio.wait_for(coroutine, 6)
    except BaseException as exc:
        return name, f"refused ({type(exc).__name__})"


async def main():
    stranger = STRANGER.get_connection_args("client")
    attempts = []
    for port in PORTS:
        plain, tls = f"tcp://127.0.0.1:{port}", f"tls://127.0.0.1:{port}"
        attempts += [
            attempt(f"client {plain}", client_runs_code(plain)),
            attempt(f"client {tls}", client_runs_code(tls)),
            attempt(f"stranger's client {tls}", client_runs_code(tls, security=STRANGER)),
            attempt(f"connection {plain}", comm_opens(plain)),
            attempt(f"stranger's connection {tls}", comm_opens(tls, **stranger)),
        ]
    print("OUTCOMES", json.dumps(dict(await asyncio.gather(*attempts))), flush=True)


asyncio.run(main())
os._exit(0)  # failed clients may leave threads behind; they are not the test
"""


def _ports_of(executor: Any) -> set[tuple[str, int]]:
    """Ports the executor's cluster listens on: scheduler, nannies, workers."""
    ours = {os.getpid()}
    listening_before = _listening(ours)
    descendants_before = _descendants()
    assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3
    # Forked from the fork server, workers look like it: find them by pid.
    workers = _descendants() - descendants_before
    return (_listening(ours) - listening_before) | _listening(workers)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_local_cluster_admits_no_one_without_its_key(program: Any) -> None:
    before = child_processes()
    executor = executors.create("dask", max_workers=2, mp_context="forkserver")
    try:
        ports = _ports_of(executor)
        # The scheduler, two nannies, two workers, and HTTP servers.
        assert len(ports) >= 5, ports
        assert {ip for ip, _ in ports} == {"127.0.0.1"}, sorted(ports)
        intruder = program(INTRUDER, json.dumps(sorted(port for _, port in ports)))
        outcomes = intruder.json_after("OUTCOMES ", START_BOUND)
        assert intruder.wait(BOUND) == 0, intruder.report()
        admitted = {k: v for k, v in outcomes.items() if not v.startswith("refused")}
        assert not admitted, f"admitted without the cluster's key: {admitted}"
        # Nothing the intruder tried harmed the cluster.
        assert executor.submit(tasks.add, 2, 3).result(timeout=BOUND) == 5
    finally:
        executor.shutdown()
    assert not wait_for_no_new_children(before)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_dashboard_port_without_host_binds_localhost_only() -> None:
    before = child_processes()
    # Dask binds a port without a host on every interface.
    executor = executors.create(
        "dask", max_workers=1, mp_context="forkserver", dashboard_address=":0"
    )
    try:
        ports = _ports_of(executor)
        assert {ip for ip, _ in ports} == {"127.0.0.1"}, sorted(ports)
    finally:
        executor.shutdown()
    assert not wait_for_no_new_children(before)


NO_CRYPTOGRAPHY = """
import sys
sys.modules["cryptography"] = None  # as if it were not installed
import executors
from distributed.security import Security

if __name__ == "__main__":
    try:
        executors.create("dask", max_workers=1)
    except ImportError as exc:
        print("REFUSED", exc, flush=True)
    else:
        print("ACCEPTED", flush=True)
    # TLS off, explicitly: accepted (create() starts nothing).
    executors.create("dask", max_workers=1, security=Security()).shutdown()
    print("INSECURE BY CHOICE ACCEPTED", flush=True)
"""


@pytest.mark.timeout(60)
def test_without_cryptography_the_local_cluster_is_refused_clearly(
    program: Any,
) -> None:
    running = program(NO_CRYPTOGRAPHY)
    refusal = running.line_starting("REFUSED", START_BOUND)
    assert "cryptography" in refusal
    assert 'pip install "executors[dask]"' in refusal
    running.line_starting("INSECURE BY CHOICE ACCEPTED", BOUND)
    assert running.wait(BOUND) == 0, running.report()


@pytest.fixture(scope="module")
def tls_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Any, Security]]:
    """A cluster of one worker that only a client with its key may use."""
    security = Security.temporary()
    # Its files in a folder of the test's (Dask's default leaves
    # $TMPDIR/dask-scratch-space behind).
    folder = str(tmp_path_factory.mktemp("dask"))
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        cluster = distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            security=security,
            dashboard_address=None,
            local_directory=folder,
            scheduler_kwargs={
                "dashboard": False,
                "dashboard_address": "127.0.0.1:0",
                "local_directory": folder,
            },
        )
    try:
        yield cluster, security
    finally:
        cluster.close()


@pytest.mark.timeout(60)
def test_address_connects_with_the_security_given(
    tls_cluster: tuple[Any, Security],
) -> None:
    cluster, security = tls_cluster
    assert cluster.scheduler_address.startswith("tls://")
    with executors.create(
        "dask", address=cluster.scheduler_address, security=security
    ) as executor:
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3
    # Without the key the connection fails at create(), as an unreachable
    # address does.
    with pytest.raises((OSError, TypeError)):
        executors.create("dask", address=cluster.scheduler_address, connect_timeout=2)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"security": "tls"}, TypeError, "security must be a distributed"),
        ({"cluster_options": {"security": Security()}}, ValueError, "security"),
        ({"cluster_options": {"protocol": "tcp://"}}, ValueError, "protocol"),
        ({"cluster_options": {"interface": "eth0"}}, ValueError, "interface"),
    ],
)
def test_security_options_are_checked_at_create(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        executors.create("dask", **options)


def test_security_is_refused_with_a_client(tls_cluster: tuple[Any, Security]) -> None:
    cluster, security = tls_cluster
    with distributed.Client(cluster, set_as_default=False) as client:
        with pytest.raises(ValueError, match="client already has its own"):
            executors.create("dask", client=client, security=security)


# -- Ctrl-C while the cluster starts -----------------------------------------------

START_INTERRUPTED = """
import json, signal, sys, threading
import psutil
# Started in the background, a program inherits SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
import executors
from executors.testing import child_processes, tasks, wait_for_no_new_children


def report(tag):
    # Process-wide helpers, not the cluster's: distributed's Dask-Offload pool
    # and the core's reaper of dropped executors.
    threads = sorted(
        t.name
        for t in threading.enumerate()
        if t is not threading.main_thread()
        and not t.name.startswith("Dask-Offload")
        and t.name != "executors-reaper"
    )
    # A moment for processes the start left to end; there should be none.
    left = sorted(wait_for_no_new_children(set(), bound=1.0))
    print(tag, json.dumps({"processes": left, "threads": threads}), flush=True)


if __name__ == "__main__":
    options = {}
    if len(sys.argv) > 1:
        # Workers that take this many seconds to connect, as on a loaded machine.
        delay = float(sys.argv[1])
        options["cluster_options"] = {"preload": [f"import time; time.sleep({delay})"]}
    executor = executors.create("dask", max_workers=2, **options)
    print("STARTING", flush=True)
    try:
        executor.submit(tasks.add, 1, 2).result()
        print("STARTED BEFORE THE SIGNAL", flush=True)
    except KeyboardInterrupt:
        report("INTERRUPTED")
    print("RESULT", executor.submit(tasks.add, 1, 2).result(timeout=120), flush=True)
    # The worker processes; not the watcher of the cluster's folder.
    workers = [
        pid for pid in child_processes()
        if "spawn_main" in " ".join(psutil.Process(pid).cmdline())
    ]
    print("WORKERS", json.dumps(sorted(workers)), flush=True)
    executor.shutdown()
    report("CLOSED")
"""


def _wait_for_a_starting_worker(running: Program) -> None:
    deadline = time.monotonic() + START_BOUND
    while not any(
        "spawn_main" in " ".join(p.cmdline()) for p in alive(running.descendants())
    ):
        assert running.proc.poll() is None, running.report()
        assert time.monotonic() < deadline, "no worker process started"
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("to", ["parent", "group"])
def test_ctrl_c_while_the_cluster_starts_leaves_one_cluster_at_most(
    program: Any, to: str
) -> None:
    _interrupt_the_start(program(START_INTERRUPTED), to)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_while_slow_workers_start_leaves_none_of_them(program: Any) -> None:
    # Closing a nanny waits for its starting worker to connect first; workers
    # slower than the teardown's bound used to outlive the abandoned cluster.
    _interrupt_the_start(program(START_INTERRUPTED, "8"), "parent")


def _interrupt_the_start(running: Program, to: str) -> None:
    running.line_starting("STARTING", START_BOUND)
    # The scheduler is up and the workers are being spawned: the cluster is
    # half built.
    _wait_for_a_starting_worker(running)
    _send_sigint(running, to)
    after = running.json_after("INTERRUPTED ", START_BOUND)
    assert after == {"processes": [], "threads": []}, (
        f"the interrupted start left {after}\n{running.report()}"
    )
    # Usable afterwards, with exactly one cluster of two workers.
    assert running.line_starting("RESULT", START_BOUND) == "RESULT 3"
    assert len(running.json_after("WORKERS ", BOUND)) == 2, running.report()
    closed = running.json_after("CLOSED ", START_BOUND)
    assert closed == {"processes": [], "threads": []}, running.report()
    assert running.wait(BOUND) == 0, running.report()


# -- Ctrl-C without `with` -----------------------------------------------------------

BARE_MAP = """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)
import executors
from executors.testing import tasks

if __name__ == "__main__":
    executor = executors.create("dask", max_workers=2)
    executor.submit(tasks.noop).result()
    print("RUNNING", flush=True)
    # Chunks of several half-second items each: many seconds of work per chunk.
    list(executor.map(tasks.sleep_and_return, [0.5] * 100))
    print("FINISHED", flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("to", ["parent", "group"])
def test_ctrl_c_in_a_map_without_with_exits_at_once(program: Any, to: str) -> None:
    running = program(BARE_MAP)
    running.line_starting("RUNNING", START_BOUND)
    time.sleep(1.0)  # inside the map: chunks running, more queued
    tree = running.descendants()
    _send_sigint(running, to)
    sent = time.monotonic()
    code = running.wait(EXIT_BOUND)
    assert code is not None, (
        f"still running {EXIT_BOUND:.0f}s after SIGINT\n{running.report()}"
    )
    took = time.monotonic() - sent
    # The unhandled KeyboardInterrupt: Python ends itself with SIGINT.
    assert code == -signal.SIGINT, f"exit code {code}\n{running.report()}"
    assert "KeyboardInterrupt" in running.stderr
    assert wait_until_gone(tree, ORPHAN_BOUND) is not None, (
        f"left after exiting in {took:.1f}s: {describe(alive(tree))}"
    )


EXIT_WITH_WORK = """
import signal, time
signal.signal(signal.SIGINT, signal.default_int_handler)
import executors
from executors.testing import tasks

if __name__ == "__main__":
    executor = executors.create("dask", max_workers=2)
    futures = [executor.submit(tasks.sleep_and_return, 30.0) for _ in range(4)]
    while not all(future.running() for future in futures[:2]):
        time.sleep(0.01)
    print("EXITING", flush=True)
    # No shutdown(): the interpreter's exit waits for the submitted work.
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctrl_c_while_exit_waits_for_the_work_stops_it(program: Any) -> None:
    running = program(EXIT_WITH_WORK)
    running.line_starting("EXITING", START_BOUND)
    time.sleep(0.5)  # the main thread has ended; the exit waits for the tasks
    tree = running.descendants()
    os.kill(running.proc.pid, signal.SIGINT)
    code = running.wait(EXIT_BOUND)
    assert code is not None, (
        f"still running {EXIT_BOUND:.0f}s after SIGINT\n{running.report()}"
    )
    assert "Exception ignored" not in running.stderr, running.report()
    assert wait_until_gone(tree, ORPHAN_BOUND) is not None, describe(alive(tree))


# -- a killed caller ------------------------------------------------------------------

KILLED_CALLER = """
import json, sys, time
import psutil
import executors
from executors.testing import tasks

if __name__ == "__main__":
    executor = executors.create("dask", max_workers=2, mp_context=sys.argv[1])
    assert executor.submit(tasks.add, 1, 2).result() == 3
    busy = [executor.submit(tasks.sleep_and_return, 60.0) for _ in range(2)]
    while not all(future.running() for future in busy):
        time.sleep(0.01)
    time.sleep(0.3)  # the workers are inside their tasks
    tree = psutil.Process().children(recursive=True)
    print("TREE", json.dumps([p.pid for p in tree]), flush=True)
    time.sleep(120)
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_killed_caller_leaves_no_process(program: Any) -> None:
    # Dask's default start method; tests/test_parent_death.py covers the
    # fork server, with which the suite runs every backend.
    running = program(KILLED_CALLER, "spawn")
    pids = running.json_after("TREE ", START_BOUND)
    tree = [p for p in running.descendants() if p.pid in pids]
    # Two workers and the resource tracker.
    assert len(tree) == len(pids) >= 3, describe(tree)
    running.proc.kill()
    running.proc.wait(BOUND)
    took = wait_until_gone(tree, ORPHAN_BOUND)
    assert took is not None, (
        f"alive {ORPHAN_BOUND:.0f}s after the caller was killed: "
        f"{describe(alive(tree))}"
    )
