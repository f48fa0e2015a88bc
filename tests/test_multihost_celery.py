"""The ``celery`` backend across three hosts, and hosts lost mid-run.

Hosts are network namespaces (``_hosts.py``; root only, skipped elsewhere).
Redis runs on host A with a password, bound to A's address only; ``celery
worker`` runs on B and C; each is started with the command
``docs/scaling-out.md`` gives (the last test checks the page still shows
them). The caller, ``_multihost/celery_caller.py``, runs in host A and
reports in JSON lines; each task returns the ``EXECUTORS_TEST_HOST`` of the
worker that ran it.

The first test needs no namespaces: the same deployment on 127.0.0.1, one
of two workers SIGKILLed mid-map, so that the lost-worker watch is covered
wherever the suite runs.

Each test starts its own deployment: the faults below leave it damaged.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
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
    check_shut_down,
    check_unfinished_futures_fail,
    lose_host_c_mid_map,
    page_commands,
    stall_after,
    wait_until_ready,
)

pytest.importorskip("celery")

from executors.backends.celery._lostwatch import DEFAULT_LOST_WORKER_TIMEOUT
from executors.backends.celery._redisserver import redis_server_binary

# The commands of docs/scaling-out.md, with the page's example addresses
# (broker 10.0.0.5, workers 10.0.0.7 and 10.0.0.8) as placeholders.
REDIS_CONF = 'bind {broker}\nport {port}\nrequirepass {password}\nsave ""\n'
REDIS_COMMAND = "redis-server redis.conf"
BROKER_EXPORTS = (
    "export CELERY_BROKER_URL=redis://:$REDIS_PASSWORD@{broker}:{port}/0",
    "export CELERY_RESULT_BACKEND=$CELERY_BROKER_URL",
)
WORKER_COMMAND = (
    "celery -A executors.backends.celery.worker worker "
    "--hostname=worker@{worker} --concurrency=1 --prefetch-multiplier=1"
)
CALLER_CREATE = (
    'ex = executors.create("celery", broker=url, backend=url, max_workers=2, retries=2)'
)
PAGE_ADDRESSES = {"broker": "10.0.0.5", "workers": ("10.0.0.7", "10.0.0.8")}
PAGE_PORT = 6379

#: Seconds the remaining tasks may take once the deployment is whole or
#: has recovered: 750 tasks of 10 ms, two at a time, a broker round trip
#: each, take about 8 s on a quiet machine.
RUN_BOUND = 90.0
# The documented bounds (docs/scaling-out.md, "When a machine is lost").
#: A worker host lost (cut off or killed): its tasks fail with
#: WorkerCrashedError once it has not answered for lost_worker_timeout
#: (10 s) and are retried elsewhere; up to two polls of 1 to 2 s more.
LOST_WORKER_RECOVERY = DEFAULT_LOST_WORKER_TIMEOUT + 20.0
#: Redis dies: the result listener gives up after 5 s.
BROKER_LOSS_BOUND = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def argv(template: str, **fields: str) -> list[str]:
    """The arguments of a documented command line, for this environment."""
    words = shlex.split(template.format(**fields))
    if words[0] == "celery":
        # Celery warns that it runs as root (the test hosts do); with the
        # JSON content type it refuses nothing.
        words[:1] = [sys.executable, "-W", "ignore::UserWarning", "-m", "celery"]
    elif words[0] == "redis-server":
        words[0] = redis_server_binary()
    return words


def broker_env(password: str, broker: str, port: int) -> dict[str, str]:
    """What the page's ``export`` lines set, as the shell would."""
    url = f"redis://:{password}@{broker}:{port}/0"
    return {"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url}


@dataclass
class Deployment:
    """Redis and workers; ``workers`` maps each name to its process."""

    folder: Path
    password: str
    broker: str
    port: int
    redis: subprocess.Popen[Any] | None = None
    workers: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)

    def write_config(self) -> None:
        conf = self.folder / "redis.conf"
        conf.write_text(
            REDIS_CONF.format(
                broker=self.broker, port=self.port, password=self.password
            )
        )
        conf.chmod(0o600)

    def caller_argv(self, mode: str, workers: int, n: int) -> list[str]:
        return [
            sys.executable,
            str(SCRIPTS / "celery_caller.py"),
            self.broker,
            str(self.port),
            mode,
            str(workers),
            str(n),
        ]


def _worker_env(deployment: Deployment, name: str) -> dict[str, str]:
    return {
        **broker_env(deployment.password, deployment.broker, deployment.port),
        "EXECUTORS_TEST_HOST": name,
    }


# -- the option -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"lost_worker_timeout": 5}, TypeError, "applies only to an existing"),
        ({"broker": "redis://127.0.0.1:1/0", "lost_worker_timeout": 0}, ValueError,
         "greater than 0"),
        ({"broker": "redis://127.0.0.1:1/0", "lost_worker_timeout": "5"}, TypeError,
         "number of seconds or None"),
    ],
)  # fmt: skip
def test_lost_worker_timeout_is_checked_at_create(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    import executors

    with pytest.raises(error, match=match):
        executors.create("celery", max_workers=1, **options)


# -- one host: a worker SIGKILLed mid-map ----------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Deployment]:
    """The page's recipe on 127.0.0.1 (a free port): Redis and two workers."""
    made = Deployment(tmp_path, secrets.token_hex(16), "127.0.0.1", _free_port())
    made.write_config()
    procs: list[subprocess.Popen[Any]] = []
    log = (tmp_path / "deployment.log").open("w")
    try:
        made.redis = subprocess.Popen(
            argv(REDIS_COMMAND),
            cwd=tmp_path,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        procs.append(made.redis)
        for name in ("w1", "w2"):
            proc = subprocess.Popen(
                argv(WORKER_COMMAND, worker=name),
                cwd=tmp_path,
                env={**os.environ, **_worker_env(made, name)},
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
            made.workers[name] = proc
            procs.append(proc)
        yield made
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait(30)
        log.close()


@contextlib.contextmanager
def _local_caller(local: Deployment, mode: str, n: int) -> Iterator[Program]:
    """The caller on this host; killed, with its process group, at the end."""
    proc = subprocess.Popen(
        local.caller_argv(mode, 2, n),
        env={**os.environ, "REDIS_PASSWORD": local.password, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield Program(proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def _kill_after_a_quarter(caller: Program, worker: subprocess.Popen[Any]) -> float:
    """Once the caller is a quarter through, SIGKILL the worker's process
    group (its main and pool processes). When."""
    caller.wait_for("ready", READY_BOUND)
    caller.wait_for("quarter", RUN_BOUND)
    lost_at = time.monotonic()
    os.killpg(worker.pid, signal.SIGKILL)
    return lost_at


@pytest.mark.slow
@pytest.mark.timeout(READY_BOUND + LOST_WORKER_RECOVERY + RUN_BOUND + 60)
def test_a_worker_killed_mid_map_on_one_host_loses_nothing(local: Deployment) -> None:
    """Before the lost-worker watch, the dead worker's task held a slot for good."""
    n = 300
    with _local_caller(local, "map", n) as caller:
        lost_at = _kill_after_a_quarter(caller, local.workers["w2"])
        done = caller.wait_for("done", LOST_WORKER_RECOVERY + RUN_BOUND)
        results = done["results"]
        assert [i for _, _, i in results] == list(range(n)), "results lost"
        stall = stall_after(results, lost_at)
        print(
            f"worker w2 killed: results stopped for {stall:.2f} s; shutdown() took {done['shutdown_seconds']:.3f} s"
        )
        assert stall < LOST_WORKER_RECOVERY
        check_shut_down(caller, done)


@pytest.mark.slow  # over 10 s; the quick run keeps a sibling
@pytest.mark.timeout(READY_BOUND + 90 + 30 + 60)
def test_without_retries_a_killed_workers_tasks_fail_in_bounded_time(
    local: Deployment,
) -> None:
    """Nothing hangs and nothing is lost silently: WorkerCrashedError, in time."""
    n = 300
    with _local_caller(local, "no-retries", n) as caller:
        lost_at = _kill_after_a_quarter(caller, local.workers["w2"])
        settled = caller.wait_for("settled", 90 + 30)
        done = caller.wait_for("done", 30 + 10)
        counts = settled["counts"]
        assert "pending" not in counts, f"futures unfinished after 90 s: {counts}"
        failed = [o for o in done["outcomes"] if o[1] != "ok"]
        print(f"worker w2 killed, no retries: {counts}")
        assert failed, "no task was lost with the killed worker"
        assert {kind for _, kind, _, _ in failed} == {"WorkerCrashedError"}, failed
        assert all("worker@w2" in message for _, _, _, message in failed), failed
        # The dead worker held at most its running and its prefetched task.
        assert len(failed) <= 2, failed
        last = max(t for _, _, t, _ in failed) - lost_at
        assert last < LOST_WORKER_RECOVERY, f"failed {last:.1f} s after the kill"
        ok = [o for o in done["outcomes"] if o[1] == "ok"]
        assert {host for _, _, _, host in ok} <= {"w1", "w2"}
        check_shut_down(caller, done)


@pytest.mark.slow  # over 10 s; the quick run keeps a sibling
@pytest.mark.timeout(READY_BOUND + LOST_WORKER_RECOVERY + RUN_BOUND + 60)
def test_a_worker_that_never_answers_polls_is_missed_by_its_tasks(
    local: Deployment, tmp_path: Path
) -> None:
    """A third worker with remote control off never answers a poll (as one
    that died as it joined): its tasks are found missing from the queue."""
    (tmp_path / "no_control.py").write_text("worker_enable_remote_control = False\n")
    env = {
        **os.environ,
        **_worker_env(local, "w3"),
        "CELERY_CONFIG_MODULE": "no_control",
        "PYTHONPATH": str(tmp_path),
    }
    with (tmp_path / "w3.log").open("w") as log:
        w3 = subprocess.Popen(
            [*argv(WORKER_COMMAND, worker="w3"), "--loglevel=INFO"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    local.workers["w3"] = w3
    # It answers no ping: its log says when it consumes.
    deadline = time.monotonic() + READY_BOUND
    while "ready." not in (tmp_path / "w3.log").read_text():
        assert w3.poll() is None, (tmp_path / "w3.log").read_text()
        assert time.monotonic() < deadline, "worker w3 never became ready"
        time.sleep(0.2)
    n = 300
    try:
        with _local_caller(local, "map", n) as caller:
            lost_at = _kill_after_a_quarter(caller, w3)
            done = caller.wait_for("done", LOST_WORKER_RECOVERY + RUN_BOUND)
            results = done["results"]
            assert [i for _, _, i in results] == list(range(n)), "results lost"
            hosts = {host for t, host, _ in results if t < lost_at}
            assert "w3" in hosts, f"worker w3 ran nothing before it was killed: {hosts}"
            stall = stall_after(results, lost_at)
            print(
                f"worker w3 (no remote control) killed: ran {hosts}; stall {stall:.2f} s"
            )
            assert stall < LOST_WORKER_RECOVERY
            assert caller.proc.wait(SHUTDOWN_BOUND) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(w3.pid, signal.SIGKILL)
        w3.wait(30)


def test_a_task_sent_before_a_long_silence_is_reported_once(local: Deployment) -> None:
    """A worker silent for 3x the timeout is forgotten in the same poll that
    blames a task on it: the report must not need it any more (KeyError)."""
    # REPLY_SECONDS (0.5 s) of a poll is over 3x this test's timeout.
    from executors.backends.celery._celeryside import make_app
    from executors.backends.celery._lostwatch import LostWorkerWatch

    url = broker_env(local.password, local.broker, local.port)["CELERY_BROKER_URL"]
    app = make_app(url, url, {})
    reports: list[tuple[list[str], str, float]] = []
    failures: list[BaseException] = []
    try:
        deadline = time.monotonic() + READY_BOUND
        while len(app.control.ping(timeout=1.0)) < 2:
            assert time.monotonic() < deadline, "the workers never answered"
        watch = LostWorkerWatch(
            app,
            dict,
            lambda number: f"test-{number}",
            lambda *report: reports.append(report),
            failures.append,
            timeout=0.1,
        )
        # Both workers answer, and are known (a loaded machine may answer
        # a poll too late).
        while len(watch._known) < 2:
            assert time.monotonic() < deadline, "the watch never met both workers"
            watch.poll({})
        sent_at = time.monotonic()
        os.killpg(local.workers["w2"].pid, signal.SIGKILL)
        local.workers["w2"].wait(30)
        # The next poll comes late (a broker that stalled): the poll that
        # finds w2 silent finds it silent for over 3x the timeout.
        watch.poll({"7": sent_at})
    finally:
        app.close()
    assert not failures
    # Reported once. Which worker it is blamed on is w2, unless the loaded
    # machine kept w1 from answering within this test's 0.1 s too.
    assert [numbers for numbers, _, _ in reports] == [["7"]]
    assert reports[0][1] in ("worker@w2", "worker@w1")


# -- three hosts ---------------------------------------------------------------


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    with Hosts.create(tmp_path / "logs") as made:
        yield made


@dataclass
class Cluster:
    hosts: Hosts
    deployment: Deployment

    def start_caller(self, mode: str, n: int = TASKS) -> Program:
        return self.hosts.a.start_program(
            self.deployment.caller_argv(mode, 2, n),
            env={"REDIS_PASSWORD": self.deployment.password},
            cwd=self.deployment.folder,
        )


@pytest.fixture
def cluster(hosts: Hosts, tmp_path: Path) -> Cluster:
    """The page's recipe: Redis on A (password, A's address), workers on B, C."""
    folder = tmp_path / "deployment"
    folder.mkdir()
    made = Deployment(folder, secrets.token_hex(16), hosts.a.address, PAGE_PORT)
    made.write_config()
    made.redis = hosts.a.run(argv(REDIS_COMMAND), cwd=folder)
    for host in (hosts.b, hosts.c):
        made.workers[host.role] = host.run(
            argv(WORKER_COMMAND, worker=host.address),
            env=_worker_env(made, host.role),
            cwd=folder,
        )
    return Cluster(hosts, made)


def _wait_ready(cluster: Cluster, caller: Program) -> None:
    event = wait_until_ready(caller, cluster.hosts, READY_BOUND)
    assert len(event["workers"]) == 2, event


def _per_host(results: list[list[Any]]) -> dict[str, int]:
    assert [i for _, _, i in results] == list(range(TASKS)), "results lost"
    counts: dict[str, int] = {}
    for _, host, _ in results:
        counts[host] = counts.get(host, 0) + 1
    assert set(counts) <= {"B", "C"}, counts
    return counts


@pytest.mark.slow
@pytest.mark.timeout(READY_BOUND + RUN_BOUND + 60)
def test_a_map_runs_on_both_worker_hosts(cluster: Cluster) -> None:
    caller = cluster.start_caller("map")
    _wait_ready(cluster, caller)
    done = caller.wait_for("done", RUN_BOUND)
    per_host = _per_host(done["results"])
    assert set(per_host) == {"B", "C"}, f"tasks ran on {per_host} only"
    print(f"1,000 tasks: {per_host}; took {done['t'] - done['results'][0][0]:.2f} s")
    assert caller.proc.wait(SHUTDOWN_BOUND) == 0
    # Redis listens on A's address only: not on A's loopback.
    probe = cluster.hosts.a.start_program(
        [
            sys.executable,
            "-c",
            "import json, socket\n"
            "s = socket.socket()\n"
            "try:\n"
            f"    s.connect(('127.0.0.1', {PAGE_PORT})); r = 'connected'\n"
            "except OSError as e:\n"
            "    r = repr(e)\n"
            "print(json.dumps({'event': 'probe', 'result': r}))\n",
        ]
    )
    assert probe.wait_for("probe", 30)["result"] != "connected"


def _lose_host_mid_map(cluster: Cluster, lose: str) -> dict[str, Any]:
    """Map TASKS tasks; after a quarter, lose host C; check nothing is lost."""
    caller = cluster.start_caller("map")
    _wait_ready(cluster, caller)
    done, lost_at = lose_host_c_mid_map(
        caller, cluster.hosts, lose, RUN_BOUND, LOST_WORKER_RECOVERY
    )
    results = done["results"]
    per_host = _per_host(results)
    before = {host for t, host, _ in results if t < lost_at}
    assert "C" in before, "host C ran nothing before it was lost"
    counts = (per_host.get("B", 0), per_host.get("C", 0))
    figures = check_recovery(results, lost_at, lose, counts, LOST_WORKER_RECOVERY)
    check_shut_down(caller, done)
    return {**figures, "shutdown_seconds": done["shutdown_seconds"]}


@pytest.mark.slow
@pytest.mark.timeout(READY_BOUND + LOST_WORKER_RECOVERY + RUN_BOUND + 60)
@pytest.mark.parametrize("lose", ["link", "kill"])  # cut off; processes killed
def test_a_worker_host_lost_mid_map_loses_nothing(cluster: Cluster, lose: str) -> None:
    _lose_host_mid_map(cluster, lose)


@pytest.mark.slow
@pytest.mark.timeout(READY_BOUND + 90 + 30 + 60)
def test_losing_the_broker_fails_every_unfinished_future_in_bounded_time(
    cluster: Cluster,
) -> None:
    caller = cluster.start_caller("futures")
    _wait_ready(cluster, caller)
    caller.wait_for("quarter", RUN_BOUND)
    lost_at = time.monotonic()
    assert cluster.deployment.redis is not None
    cluster.hosts.a.kill(cluster.deployment.redis)
    check_unfinished_futures_fail(
        caller,
        lost_at,
        lost="broker",
        error="ExecutorFailedError",
        bound=BROKER_LOSS_BOUND,
        shutdown_bound=SHUTDOWN_BOUND,
    )


# -- the page shows what these tests run --------------------------------------


def test_the_page_shows_the_celery_commands_these_tests_run() -> None:
    commands = page_commands(PAGE)
    page = PAGE.read_text()
    broker = PAGE_ADDRESSES["broker"]
    expected = [
        REDIS_COMMAND,
        *(line.format(broker=broker, port=PAGE_PORT) for line in BROKER_EXPORTS),
        *(WORKER_COMMAND.format(worker=w) for w in PAGE_ADDRESSES["workers"]),
    ]
    missing = [command for command in expected if command not in commands]
    assert not missing, f"docs/scaling-out.md no longer shows: {missing}"
    conf = REDIS_CONF.format(broker=broker, port=PAGE_PORT, password="{password}")
    shown = conf.replace("{password}", "")
    assert all(line in page for line in shown.splitlines()), conf
    assert CALLER_CREATE in page
    assert CALLER_CREATE in (SCRIPTS / "celery_caller.py").read_text()
