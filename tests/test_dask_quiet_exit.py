"""The ``dask`` backend ends a program without a library traceback, even when slow.

Dask's ``Worker.close()`` closes the worker's connections under a heartbeat
in flight; the heartbeat fails ("ConnectionPool closing") and Dask logs it
as an ERROR with three chained tracebacks, on the caller's stderr, which the
workers share. The busier the machine, the likelier a heartbeat is in
flight when the cluster closes: a program that ended with pending work
printed one under load. Our workers log it at DEBUG.

* One test cuts a heartbeat short in each real worker, exactly as
  ``Worker.close()`` does, and reads what the worker logged.
* One runs such a program beside CPU-bound processes and reads its stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import executors
from executors.testing import BOUND, child_processes, tasks, wait_for_no_new_children

SCRIPTS = Path(__file__).parent / "_fault_scripts"
#: CPU-bound processes beside the program: more than this machine has cores.
LOAD = 3
TASKS = 6


async def _cut_a_heartbeat_short(dask_worker: Any) -> list[str]:
    """In a worker: the levels its heartbeat failure is logged at.

    The heartbeat goes to a port that accepts and never answers, so it is
    in flight when its connection pool closes, as in ``Worker.close()``.
    Sent by value (the workers cannot import this module).
    """
    import asyncio
    import logging

    from distributed.core import ConnectionPool

    seen: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "heartbeat" in str(record.msg):
                seen.append(record.levelname)

    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    logger = logging.getLogger("distributed.worker")
    handler = Seen(logging.DEBUG)
    level = logger.level
    logger.setLevel(logging.DEBUG)  # so that the lowered record shows
    logger.addHandler(handler)
    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = await ConnectionPool(connection_args=dask_worker.connection_args)
    scheduler = dask_worker.scheduler
    dask_worker.scheduler = pool(f"tls://127.0.0.1:{port}")
    try:
        beat = asyncio.ensure_future(dask_worker.heartbeat())
        while not held:
            await asyncio.sleep(0.01)
        await pool.close()
        await asyncio.wait_for(beat, 30)
    finally:
        dask_worker.scheduler = scheduler
        server.close()
        for writer in held:
            writer.close()
        logger.removeHandler(handler)
        logger.setLevel(level)
    return seen


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_heartbeat_cut_short_by_closing_is_no_error() -> None:
    before = child_processes()
    executor: Any = executors.create("dask", max_workers=2, mp_context="forkserver")
    with executor:
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3
        client = executor._manager.runtime.client
        seen = client.run(_cut_a_heartbeat_short)
        assert len(seen) == 2
        assert all(seen.values()), f"no heartbeat failure logged: {seen}"
        loud = {k: v for k, v in seen.items() if set(v) != {"DEBUG"}}
        assert not loud, f"a heartbeat cut short logged above DEBUG: {loud}"
        # The workers work on.
        assert executor.submit(tasks.add, 2, 3).result(timeout=BOUND) == 5
    assert not wait_for_no_new_children(before)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_program_ending_with_pending_work_under_load_prints_nothing(
    tmp_path: Path,
) -> None:
    options = json.dumps({"max_workers": 2, "mp_context": "forkserver"})
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(LOAD)
    ]
    try:
        program = subprocess.run(
            [
                sys.executable,
                str(SCRIPTS / "exit_with_pending.py"),
                "dask",
                options,
                str(tmp_path),
                str(TASKS),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        for proc in busy:
            proc.kill()
        for proc in busy:
            proc.wait(BOUND)
    report = f"exit code {program.returncode}\nstderr:\n{program.stderr}"
    assert len(list(tmp_path.glob("task-*"))) == TASKS, report
    assert program.returncode == 0, report
    assert "Traceback" not in program.stderr, report
    assert program.stderr == "", report
