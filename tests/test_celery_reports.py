"""The private worker's reports, read by the caller: no record lost or cut.

The worker writes one JSON record a line to a pipe (``ready``, and a pool
process's ``init``/``init-ok``/``init-failed``). The caller reads it in
chunks: first until ``ready``, then in the deployment's watch. A record that
arrives in the same chunk as ``ready``, or a line cut between two chunks,
must reach the watch whole. Here the pipe's writer is the test and the
"worker" a sleeping process, so each chunk is exactly what the test wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytest.importorskip("celery")
pytest.importorskip("redis")
from executors.backends.celery._deployment import LocalDeployment

_READY = b'{"event": "ready", "pid": 1}\n'
_INIT = b'{"event": "init", "pid": 2}\n'


@pytest.fixture
def reports() -> Iterator[tuple[LocalDeployment, int]]:
    """A deployment that was never started, its report pipe's write end."""
    deployment = LocalDeployment(1)
    read_end, write_end = os.pipe()
    deployment.report_fd = read_end
    # Alive, in its own process group as the real worker is: stop() kills
    # the group and reaps it.
    deployment.worker = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        start_new_session=True,
    )
    try:
        yield deployment, write_end
    finally:
        os.close(write_end)
        deployment.stop()


def test_a_record_read_with_ready_is_kept(
    reports: tuple[LocalDeployment, int],
) -> None:
    deployment, write_end = reports
    os.write(write_end, _READY + _INIT)
    assert deployment.wait_ready() == [{"event": "init", "pid": 2}]


def test_a_record_cut_between_two_reads_is_read_whole(
    reports: tuple[LocalDeployment, int],
) -> None:
    deployment, write_end = reports
    os.write(write_end, _INIT + _READY + _INIT[:10])
    assert deployment.wait_ready() == [{"event": "init", "pid": 2}]
    os.write(write_end, _INIT[10:])
    assert deployment.wait_for_reports(5.0)
    assert deployment.read_reports() == [{"event": "init", "pid": 2}]
