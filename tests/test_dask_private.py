"""The ``dask`` backend's local cluster keeps to itself on a shared machine.

* **Its files are private.** The scheduler's and the workers' Dask
  workspaces (where workers spill pickled data) live in a folder of the
  executor's own, mode 0700, removed at shutdown and after a failed start:
  never in the shared ``$TMPDIR/dask-scratch-space``, which another user
  may have created, writable by all.
* **Its HTTP servers serve only a health check.** Dask's pages (logs, task
  keys, call stacks) are plain HTTP without authentication on 127.0.0.1,
  readable by any local user; without a dashboard asked for, only
  ``/health`` answers. A dashboard asked for beyond loopback is warned about.
* **A stranger's failed TLS handshake is no WARNING in the caller.** Any
  local process may open a connection to the cluster's ports; one that
  speaks no TLS is logged at DEBUG, in the caller and in the workers.
"""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import executors
from _programs import ready_caller, wait_until_empty
from executors import DaskClusterError
from executors.testing import BOUND, child_processes, tasks, wait_for_no_new_children

pytestmark = pytest.mark.timeout(120)

# Pages Dask serves by default on the scheduler or the workers, each of
# which shows something of the cluster: workers, logs, call stacks, tasks.
PAGES = [
    "/info/main/workers.html",
    "/info/main/logs.html",
    "/sitemap.json",
    "/statics/css/base.css",
    "/metrics",
    "/json/identity.json",
    "/proxy/8787/127.0.0.1/status",
]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A $TMPDIR of our own, short: a fork server's socket is made there."""
    shared = Path(tempfile.mkdtemp(prefix="shared-"))
    try:
        yield shared
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture
def shared_tmp(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A $TMPDIR holding a dask-scratch-space another user left open to all."""
    shared = short_tmp
    (shared / "dask-scratch-space").mkdir()
    os.chmod(shared / "dask-scratch-space", 0o777)
    os.chmod(shared, 0o1777)
    # multiprocessing's own folder (the fork server's socket) stays in the
    # real one: it outlives this test.
    multiprocessing.util.get_temp_dir()
    # What Dask and mkdtemp read (TMPDIR is read once, into this).
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    return shared


@pytest.fixture
def executor() -> Iterator[Any]:
    before = child_processes()
    executor = executors.create("dask", max_workers=2, mp_context="forkserver")
    try:
        yield executor
    finally:
        executor.shutdown()
    assert not wait_for_no_new_children(before)


def _runtime(executor: Any) -> Any:
    assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3
    return executor._manager.runtime


def _ours(shared: Path) -> list[Path]:
    return sorted(shared.glob("executors-dask-*"))


# -- files -----------------------------------------------------------------


def test_the_cluster_keeps_its_files_in_a_private_folder(shared_tmp: Path) -> None:
    before = child_processes()
    executor = executors.create("dask", max_workers=2, mp_context="forkserver")
    try:
        _runtime(executor)
        assert list((shared_tmp / "dask-scratch-space").iterdir()) == []
        found = _ours(shared_tmp)
        assert len(found) == 1, f"the cluster's own folders: {found}"
        folder = found[0]
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert folder.stat().st_uid == os.getuid()
        workspace = sorted(p.name for p in (folder / "dask-scratch-space").iterdir())
        assert [n for n in workspace if n.startswith("worker-")], workspace
        assert [n for n in workspace if n.startswith("scheduler-")], workspace
    finally:
        executor.shutdown()
    assert not wait_for_no_new_children(before)
    assert list((shared_tmp / "dask-scratch-space").iterdir()) == []
    assert _ours(shared_tmp) == [], "the cluster's folder outlived shutdown()"
    # Dask put the workspaces on sys.path: a folder of that name made later
    # by anyone must not be imported from.
    assert not [p for p in sys.path if p.startswith(str(folder))], sys.path


def test_a_failed_start_leaves_no_folder(shared_tmp: Path) -> None:
    before = child_processes()
    executor = executors.create(
        "dask",
        max_workers=1,
        mp_context="forkserver",
        cluster_options={"memory_limit": "not a size"},
    )
    with pytest.raises(DaskClusterError):
        executor.submit(tasks.add, 1, 2)
    executor.shutdown()
    assert not wait_for_no_new_children(before)
    assert _ours(shared_tmp) == []
    assert list((shared_tmp / "dask-scratch-space").iterdir()) == []


# -- pages -------------------------------------------------------------------


def _get(port: int, path: str) -> int | str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError as exc:
        return f"refused ({exc.reason})"


def _http_ports(runtime: Any) -> dict[str, int]:
    info = runtime.client.scheduler_info(n_workers=-1)
    ports = {"scheduler": info["services"]["dashboard"]}
    for address, worker in info["workers"].items():
        ports[f"worker {address}"] = worker["services"]["dashboard"]
    return ports


def test_without_a_dashboard_only_the_health_check_answers(executor: Any) -> None:
    ports = _http_ports(_runtime(executor))
    assert len(ports) == 3, ports
    served = {
        f"{name} {path}": status
        for name, port in ports.items()
        for path in PAGES
        if (status := _get(port, path)) == 200
    }
    assert not served, f"pages served to any local user: {served}"
    health = {name: _get(port, "/health") for name, port in ports.items()}
    assert set(health.values()) == {200}, health


def test_a_dashboard_beyond_loopback_is_warned_about() -> None:
    with pytest.warns(UserWarning, match="beyond this machine") as caught:
        executors.create("dask", dashboard_address="0.0.0.0:0").shutdown()
    assert caught[0].filename == __file__  # points at the caller's line
    for private in ("127.0.0.1:0", ":0", "localhost:0", "[::1]:0"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            executors.create("dask", dashboard_address=private).shutdown()


# -- failed handshakes -----------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.levels: dict[str, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if "TLS handshake failed" in record.getMessage():
            listener = str(record.args[0]) if isinstance(record.args, tuple) else "?"
            self.levels.setdefault(listener, []).append(record.levelname)


def _junk(address: str) -> None:
    host, port = address.rsplit("/", 1)[-1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=BOUND) as sock:
        sock.sendall(b"GET /info/main/workers.html HTTP/1.0\r\n\r\n" + bytes(200))


def test_a_stranger_failing_the_tls_handshake_is_no_warning(executor: Any) -> None:
    runtime = _runtime(executor)
    cluster = runtime.cluster
    logger = logging.getLogger("distributed.comm.tcp")
    records = _Records()
    level = logger.level
    logger.setLevel(logging.DEBUG)  # so that the lowered record shows
    logger.addHandler(records)

    # The same in each worker, through closures that cloudpickle sends by
    # value (the workers cannot import this module).
    def record_in_worker() -> None:
        found = logging.getLogger("distributed.comm.tcp")
        seen: dict[str, list[str]] = {}

        class Seen(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "TLS handshake failed" in record.getMessage():
                    listener = (
                        str(record.args[0]) if isinstance(record.args, tuple) else "?"
                    )
                    seen.setdefault(listener, []).append(record.levelname)

        found.setLevel(logging.DEBUG)
        found.addHandler(Seen(logging.DEBUG))
        found.executors_seen = seen  # type: ignore[attr-defined]

    def seen_in_worker() -> dict[str, list[str]]:
        found = logging.getLogger("distributed.comm.tcp")
        return dict(getattr(found, "executors_seen", {}))

    try:
        runtime.client.run(record_in_worker)
        workers = list(runtime.client.scheduler_info(n_workers=-1)["workers"])
        ours = [cluster.scheduler_address]
        ours += [nanny.address for nanny in cluster.workers.values()]
        for address in ours + workers:
            _junk(address)
        deadline = time.monotonic() + BOUND
        while True:
            seen = dict(records.levels)
            for levels in runtime.client.run(seen_in_worker).values():
                seen.update(levels)
            if set(seen) >= {*ours, *workers} or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    assert set(seen) >= {*ours, *workers}, f"handshakes logged: {seen}"
    loud = {k: v for k, v in seen.items() if set(v) != {"DEBUG"}}
    assert not loud, f"failed handshakes logged above DEBUG: {loud}"
    # The cluster works on.
    assert executor.submit(tasks.add, 2, 3).result(timeout=BOUND) == 5


KILLED_CALLER = """
import sys, time
import executors
from executors.testing import tasks

if __name__ == "__main__":
    executor = executors.create("dask", max_workers=1, mp_context="forkserver")
    assert executor.submit(tasks.add, 1, 2).result(timeout=60) == 3
    print("READY", flush=True)
    time.sleep(120)
"""


@pytest.mark.slow
def test_a_killed_caller_leaves_no_folder(tmp_path: Path, short_tmp: Path) -> None:
    shared = short_tmp
    script = tmp_path / "killed_caller.py"
    script.write_text(KILLED_CALLER)
    with ready_caller(str(script), env={"TMPDIR": str(shared)}) as caller:
        assert len(_ours(shared)) == 1
        caller.proc.kill()  # nothing of the caller runs any more
        caller.wait(BOUND)
        wait_until_empty(lambda: _ours(shared), BOUND, "left after SIGKILL")
