"""The session-end check of conftest.py fails a run that leaves files behind.

A small pytest session runs in a subprocess with this suite's conftest.py:
its test leaves an ``executors-*`` folder in the temporary directory and an
entry in ``/dev/shm``, and keeps a file and a named semaphore there open
until the session ends. The session must fail, name the two leftovers,
remove them, and spare the entries still held.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")
SHM = Path("/dev/shm")

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm on this system"),
]

LEAVING_TEST = """
import os
import tempfile
import _multiprocessing

FOLDER_PREFIX = {folder_prefix!r}
SHM_LEFT = {shm_left!r}
SHM_HELD = {shm_held!r}
SEM_HELD = {sem_held!r}
HELD = []


def test_leaves_files_behind():
    folder = tempfile.mkdtemp(prefix=FOLDER_PREFIX)
    with open(os.path.join(folder, "redis.log"), "w") as log:
        log.write("left behind")
    with open(SHM_LEFT, "wb") as segment:
        segment.write(b"x" * 4096)
    # Still open when the session ends: in use, not leftovers. A named
    # semaphore is mapped under another name (glibc renames it).
    HELD.append(open(SHM_HELD, "wb"))
    HELD.append(_multiprocessing.SemLock(1, 1, 1, SEM_HELD, False))
"""

CLEAN_TEST = """
import os
import tempfile


def test_cleans_up():
    folder = tempfile.mkdtemp(prefix="executors-leftover-check-clean-")
    os.rmdir(folder)
"""


def _run_session(
    directory: Path, test_source: str, tag: str
) -> subprocess.CompletedProcess[str]:
    (directory / "conftest.py").write_text(CONFTEST.read_text())
    (directory / "test_inner.py").write_text(test_source)
    tmp = directory / "tmp"
    tmp.mkdir()
    env = dict(os.environ)
    env["TMPDIR"] = str(tmp)  # the folder is left here, not in the shared /tmp
    env["EXECUTORS_TEST_LEFTOVER_GRACE"] = "0.5"
    # Other test runs may share this machine's /dev/shm: look at ours only.
    env["EXECUTORS_TEST_LEFTOVER_MATCH"] = tag
    env.pop("PYTEST_ADDOPTS", None)
    # The conftest imports the suite's helper modules, which live beside it.
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(CONFTEST.parent), env.get("PYTHONPATH")])
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-p",
            "no:xdist",
            "-q",
            "test_inner.py",
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.mark.slow
def test_a_session_that_leaves_files_fails_and_names_them(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:12]
    folder_prefix = f"executors-leftover-check-{tag}-"
    shm_left = SHM / f"sem.mp-leftover-check-{tag}"
    shm_held = SHM / f"psm_leftover-check-held-{tag}"
    sem_held = SHM / f"sem.mp-leftover-check-held-{tag}"
    source = LEAVING_TEST.format(
        folder_prefix=folder_prefix,
        shm_left=str(shm_left),
        shm_held=str(shm_held),
        sem_held=f"/mp-leftover-check-held-{tag}",
    )
    try:
        result = _run_session(tmp_path, source, tag)
        output = result.stdout + result.stderr
        assert result.returncode == pytest.ExitCode.TESTS_FAILED, output
        assert "1 passed" in output, output
        assert "2 files of this test run outlived it" in output, output
        folders = list((tmp_path / "tmp").glob(folder_prefix + "*"))
        assert f"folder {tmp_path / 'tmp' / folder_prefix}" in output, output
        assert f"file {shm_left}" in output, output
        assert str(shm_held) not in output, output
        assert str(sem_held) not in output, output
        # Reported, then removed; the entry in use is left alone.
        assert folders == []
        assert not shm_left.exists()
    finally:
        for path in (shm_left, shm_held, sem_held):
            if path.exists():
                path.unlink()


@pytest.mark.slow
def test_a_session_that_leaves_nothing_passes(tmp_path: Path) -> None:
    result = _run_session(tmp_path, CLEAN_TEST, "leftover-check-clean")
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.OK, output
    assert "outlived it" not in output, output
