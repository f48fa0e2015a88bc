"""The ``dask`` backend across three hosts, with TLS, and hosts lost mid-run.

Hosts are network namespaces (``_hosts.py``; root only, skipped elsewhere).
The scheduler runs on host A, ``dask worker`` on B and C, each started with
the command ``docs/scaling-out.md`` gives (the last test checks the page
still shows these commands), with certificates from the page's
``make_certs.py`` (``_multihost/make_certs.py``). The caller,
``_multihost/dask_caller.py``, runs in host A, since this process stays in
the machine's own namespace, and reports in JSON lines.

Each test starts its own cluster: the faults below leave it damaged.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from _hosts import (
    PAGE,
    READY_BOUND,
    SCRIPTS,
    SHUTDOWN_BOUND,
    TASKS,
    Hosts,
    Program,
    check_recovery,
    check_unfinished_futures_fail,
    lose_host_c_mid_map,
    page_commands,
    wait_until_ready,
)

# The commands of docs/scaling-out.md, with the page's example addresses
# (scheduler 10.0.0.5, workers 10.0.0.7 and 10.0.0.8) as placeholders.
CERTS_COMMAND = "python make_certs.py"
SCHEDULER_COMMAND = (
    "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=1 "
    "dask scheduler --host {scheduler} --port 8786 --protocol tls "
    "--tls-ca-file ca.pem --tls-cert scheduler-cert.pem --tls-key scheduler-key.pem"
)
WORKER_COMMAND = (
    "dask worker tls://{scheduler}:8786 --nworkers 2 --nthreads 1 --host {worker} "
    "--tls-ca-file ca.pem --tls-cert worker-cert.pem --tls-key worker-key.pem"
)
PAGE_ADDRESSES = {"scheduler": "10.0.0.5", "workers": ("10.0.0.7", "10.0.0.8")}

#: Worker threads of the cluster: two hosts of two one-thread workers.
THREADS = 4
#: Seconds the remaining tasks may take once the cluster is whole or has
#: recovered: 750 tasks of 10 ms on two threads take 4 s on a quiet machine.
RUN_BOUND = 60.0
# The documented bounds (docs/scaling-out.md, "When a machine is lost").
#: A worker host whose link is cut: Dask notices when the TCP connection
#: to it times out (``distributed.comm.timeouts.tcp``, 30 s), then runs its
#: tasks elsewhere.
LINK_CUT_RECOVERY = 60.0
#: A worker host whose processes die: its kernel resets the connections.
KILLED_RECOVERY = 15.0
#: The scheduler dies: every unfinished future fails within this, which is
#: the client's reconnection attempt (``connect_timeout``, 30 s) and slack.
SCHEDULER_LOSS_BOUND = 60.0


def argv(template: str, **addresses: str) -> tuple[dict[str, str], list[str]]:
    """The environment and arguments of a documented command line."""
    words = shlex.split(template.format(**addresses))
    env = {}
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if words[0] == "dask":  # the `dask` of this environment, as the page says
        words[:1] = [sys.executable, "-m", "dask"]
    elif words[0] == "python":
        words[0] = sys.executable
    return env, words


@dataclass
class Cluster:
    hosts: Hosts
    tls_dir: Path
    address: str
    scheduler: Popen[Any]

    def start_caller(self, mode: str) -> Program:
        return self.hosts.a.start_program(
            [
                sys.executable,
                str(SCRIPTS / "dask_caller.py"),
                self.address,
                mode,
                str(THREADS),
                str(TASKS),
            ],
            cwd=self.tls_dir,
        )


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    with Hosts.create(tmp_path / "logs") as made:
        yield made


@pytest.fixture
def cluster(hosts: Hosts, tmp_path: Path) -> Cluster:
    """The page's recipe: certificates, a scheduler on A, workers on B and C."""
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    # Certificates are made on one machine and copied: no network involved.
    # Those of another CA, in stranger/, are a client the cluster must refuse.
    stranger = tls_dir / "stranger"
    stranger.mkdir()
    for directory in (tls_dir, stranger):
        (directory / "make_certs.py").write_text(
            (SCRIPTS / "make_certs.py").read_text()
        )
        _, words = argv(CERTS_COMMAND)
        assert Popen(words, cwd=directory).wait(60) == 0, "make_certs.py failed"
    scheduler = hosts.a.address
    # The scheduler and the workers keep their scratch space in the test's
    # directory: Dask's default would leave /tmp/dask-scratch-space behind.
    scratch = {"DASK_TEMPORARY_DIRECTORY": str(tmp_path / "scratch")}
    env, words = argv(SCHEDULER_COMMAND, scheduler=scheduler)
    scheduler_proc = hosts.a.run(words, env={**env, **scratch}, cwd=tls_dir)
    for host in (hosts.b, hosts.c):
        env, words = argv(WORKER_COMMAND, scheduler=scheduler, worker=host.address)
        host.run(words, env={**env, **scratch}, cwd=tls_dir)
    return Cluster(hosts, tls_dir, f"tls://{scheduler}:8786", scheduler_proc)


def _host_of(worker_address: str) -> str:
    match = re.fullmatch(r"tls://([\d.]+):\d+", worker_address)
    assert match, f"not a TLS worker address: {worker_address}"
    return match.group(1)


def _wait_ready(cluster: Cluster, caller: Program) -> None:
    assert wait_until_ready(caller, cluster.hosts, READY_BOUND)["threads"] == THREADS


def _check_every_result(results: list[list[Any]], hosts: Hosts) -> dict[str, int]:
    """All of range(TASKS), in order, from hosts B and C; count per host."""
    assert [i for _, _, i in results] == list(range(TASKS)), "results lost"
    per_host: dict[str, int] = {}
    for _, worker, _ in results:
        host = _host_of(worker)
        per_host[host] = per_host.get(host, 0) + 1
    assert set(per_host) <= {hosts.b.address, hosts.c.address}
    return per_host


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(READY_BOUND + RUN_BOUND + 60)
def test_a_map_runs_on_both_worker_hosts(cluster: Cluster) -> None:
    caller = cluster.start_caller("map")
    _wait_ready(cluster, caller)
    done = caller.wait_for("done", RUN_BOUND)
    per_host = _check_every_result(done["results"], cluster.hosts)
    assert set(per_host) == {cluster.hosts.b.address, cluster.hosts.c.address}, (
        f"tasks ran on {per_host} only"
    )
    assert caller.proc.wait(SHUTDOWN_BOUND) == 0
    # Mutual TLS: a client whose certificate another CA signed is turned away.
    stranger = cluster.start_caller("stranger")
    event = stranger.next_event(RUN_BOUND)
    assert event["event"] == "refused", "a client of another CA connected"
    print(f"a client of another CA: {event['error']}")
    assert stranger.proc.wait(SHUTDOWN_BOUND) == 0


def _lose_host_mid_map(
    cluster: Cluster, lose: str, recovery_bound: float
) -> dict[str, Any]:
    """Map TASKS tasks; after a quarter, lose host C; check nothing is lost."""
    hosts = cluster.hosts
    caller = cluster.start_caller("map")
    _wait_ready(cluster, caller)
    done, lost_at = lose_host_c_mid_map(caller, hosts, lose, RUN_BOUND, recovery_bound)
    results = done["results"]
    per_host = _check_every_result(results, hosts)
    before = {_host_of(w) for t, w, _ in results if t < lost_at}
    assert hosts.c.address in before, "host C ran nothing before it was lost"
    counts = (per_host.get(hosts.b.address, 0), per_host.get(hosts.c.address, 0))
    figures = check_recovery(results, lost_at, lose, counts, recovery_bound)
    assert caller.proc.wait(SHUTDOWN_BOUND) == 0
    return figures


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize(
    ("lose", "recovery_bound"),
    [
        # Its link is cut; its processes are killed.
        pytest.param("link", LINK_CUT_RECOVERY, marks=pytest.mark.timeout(
            READY_BOUND + LINK_CUT_RECOVERY + RUN_BOUND + 60)),
        pytest.param("kill", KILLED_RECOVERY, marks=pytest.mark.timeout(
            READY_BOUND + KILLED_RECOVERY + RUN_BOUND + 60)),
    ],
)  # fmt: skip
def test_a_worker_host_lost_mid_map_loses_nothing(
    cluster: Cluster, lose: str, recovery_bound: float
) -> None:
    _lose_host_mid_map(cluster, lose, recovery_bound)


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(READY_BOUND + SCHEDULER_LOSS_BOUND + SHUTDOWN_BOUND + 60)
def test_losing_the_scheduler_fails_every_unfinished_future_in_bounded_time(
    cluster: Cluster,
) -> None:
    hosts = cluster.hosts
    caller = cluster.start_caller("futures")
    _wait_ready(cluster, caller)
    caller.wait_for("quarter", RUN_BOUND)
    lost_at = time.monotonic()
    hosts.a.kill(cluster.scheduler)
    check_unfinished_futures_fail(
        caller,
        lost_at,
        lost="scheduler",
        error="DaskClusterError",
        bound=SCHEDULER_LOSS_BOUND,
        shutdown_bound=SHUTDOWN_BOUND,
    )


# -- the page shows what these tests run --------------------------------------


def _squeezed(text: str) -> str:
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def test_the_page_shows_the_commands_these_tests_run() -> None:
    commands = page_commands(PAGE)
    scheduler = str(PAGE_ADDRESSES["scheduler"])
    expected = [
        CERTS_COMMAND,
        SCHEDULER_COMMAND.format(scheduler=scheduler),
        *(
            WORKER_COMMAND.format(scheduler=scheduler, worker=worker)
            for worker in PAGE_ADDRESSES["workers"]
        ),
    ]
    missing = [command for command in expected if command not in commands]
    assert not missing, f"docs/scaling-out.md no longer shows: {missing}"
    page = PAGE.read_text()
    assert (SCRIPTS / "make_certs.py").read_text().strip() in page
    caller = (SCRIPTS / "dask_caller.py").read_text()
    connect = caller[
        caller.index('    security = Security(\n        tls_ca_file="ca.pem"') :
    ]
    connect = connect[: connect.index("\n    deadline")]
    assert _squeezed(connect) in _squeezed(page), connect
