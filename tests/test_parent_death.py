"""A pool owner killed with SIGKILL leaves no process behind, on every backend.

The OOM killer, ``kill -9`` and a CI job's timeout kill a program without
any cleanup. A real program (tests/_fault_scripts/parent_death.py) starts an
executor with two workers, makes each run a task, reports every process it
started, and is SIGKILLed: its workers, the fork server, the resource
tracker and whatever else the backend started must all end on their own
within :data:`GONE_BOUND` seconds.

The same holds while every worker is in the middle of a task
(tests/_fault_scripts/parent_death_busy.py): a worker looping in Python or
sleeping in C never goes back to read its task pipe, so only a watch that
does not wait for the task can end it; and a SIGTERM the program does not
handle kills it as surely as SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from _fault_scripts import Script, options_json
from _fault_scripts.parent_death_busy import running_pids
from _programs import alive_at, describe
from conftest import DEFAULT_TEST_OPTIONS, TEST_OPTIONS, backend_factory
from executors import _registry

#: Seconds after the SIGKILL by which every process the program started
#: must be gone.
GONE_BOUND = 3.0
#: The same bound for workers in the middle of a task, on a loaded machine.
BUSY_GONE_BOUND = 10.0
#: Starting the backend and running a task on each worker (a Dask cluster
#: takes seconds).
START_BOUND = 90.0


def _parse(script: Script, tag: str) -> list[int]:
    for line in script.stdout:
        if line.startswith(tag + " "):
            return [int(pid) for pid in json.loads(line[len(tag) + 1 :])]
    raise AssertionError(f"no {tag} line\n{script.report()}")


def _ready(script: Script, never: str) -> tuple[list[int], list[psutil.Process]]:
    """Once the program says READY: its two workers, each of which ran a
    task, and every process it named, tracked."""
    assert script.wait_for_line("READY", START_BOUND), f"{never}\n{script.report()}"
    workers = _parse(script, "WORKERS")
    assert len(workers) == 2, f"not one task per worker: {workers}"
    # psutil.Process remembers the start time: a reused pid is not
    # mistaken for a survivor. Tracked, they are killed at teardown too.
    tree = script.track({*workers, *_parse(script, "TREE")})
    assert all(p.pid != os.getpid() for p in tree)
    return workers, tree


@pytest.mark.slow
@pytest.mark.timeout(START_BOUND + 30)
def test_killed_owner_leaves_no_process(backend_name: str) -> None:
    backend_factory(backend_name)  # skips an unavailable backend
    if not _registry.backend_class(backend_name).capabilities.process_isolation:
        pytest.skip(f"{backend_name!r} starts no processes (process_isolation)")
    options = {**TEST_OPTIONS.get(backend_name, DEFAULT_TEST_OPTIONS)}
    options["max_workers"] = 2
    script = Script("parent_death.py", backend_name, options_json(options))
    try:
        _, tree = _ready(script, "the program never got ready")
        os.kill(script.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        script.proc.wait(timeout=10)
        left = alive_at(tree, killed + GONE_BOUND)
        assert not left, (
            f"{len(left)} of {len(tree)} processes still alive "
            f"{GONE_BOUND:.0f}s after their owner was SIGKILLed: "
            f"{describe(left)}\n{script.report()}"
        )
    finally:
        script.kill_tree()


@pytest.mark.slow
@pytest.mark.timeout(START_BOUND + 60)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
@pytest.mark.parametrize("kind", ["python", "sleep"])
def test_killed_owner_of_busy_workers_leaves_no_process(
    backend_name: str, kind: str, sig: int, tmp_path: Path
) -> None:
    backend_factory(backend_name)  # skips an unavailable backend
    if not _registry.backend_class(backend_name).capabilities.process_isolation:
        pytest.skip(f"{backend_name!r} starts no processes (process_isolation)")
    options = {**TEST_OPTIONS.get(backend_name, DEFAULT_TEST_OPTIONS)}
    options["max_workers"] = 2
    _kill_busy_owner(backend_name, options, kind, sig, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(START_BOUND + 60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_killed_owner_of_busy_queue_workers_any_start_method(
    method: str, tmp_path: Path
) -> None:
    # The backend test above runs the default, forkserver; a forked worker
    # also holds its siblings' pipes until it closes them, and a spawned
    # one is the caller's own child.
    options = {"max_workers": 2, "mp_context": method}
    _kill_busy_owner("queue", options, "python", signal.SIGKILL, tmp_path)


def _kill_busy_owner(
    backend_name: str, options: dict[str, object], kind: str, sig: int, tmp_path: Path
) -> None:
    script = Script(
        "parent_death_busy.py",
        backend_name,
        options_json(options),
        kind,
        str(tmp_path),
    )
    try:
        workers, tree = _ready(script, "the workers never all ran a task")
        assert {p.pid for p in tree} >= set(workers), "a worker ended early"
        os.kill(script.proc.pid, sig)
        killed = time.monotonic()
        assert script.proc.wait(timeout=10) == -sig
        left = alive_at(tree, killed + BUSY_GONE_BOUND)
        assert not left, (
            f"{len(left)} of {len(tree)} processes still alive "
            f"{BUSY_GONE_BOUND:.0f}s after their owner, whose workers ran "
            f"{kind!r} tasks, got {signal.Signals(sig).name}: "
            f"{describe(left)}\n{script.report()}"
        )
        # No task started after the owner died (a queued one, say).
        started = running_pids(str(tmp_path))
        assert set(started) <= {p.pid for p in tree}, started
    finally:
        script.kill_tree()
