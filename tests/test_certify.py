"""``python -m executors.testing certify``: the suite as a command.

Each test runs the command as a user does, in a subprocess, on a real
target: the built-in ``thread`` backend, the stdlib's ``ThreadPoolExecutor``
(whose failures must be exactly the ones ``docs/peers.md`` publishes), and
two deliberately broken executors defined here (the command imports them
from this file, put on ``PYTHONPATH``). Every process a certify run starts
carries a mark in its environment; each test checks that none survives.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import psutil
import pytest

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent / "docs" / "peers.md"
MARK = "EXECUTORS_CERTIFY_TEST_MARK"


# -- deliberately broken targets --------------------------------------------


class EagerMapExecutor(futures.ThreadPoolExecutor):
    """A thread pool whose ``map`` returns only when every result is ready."""

    def map(
        self,
        fn: Any,
        *iterables: Any,
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        results = super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)
        return iter(list(results))


class HangingShutdownExecutor(futures.ProcessPoolExecutor):
    """A process pool whose ``shutdown`` never returns, whatever interrupts it."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        while True:
            # pytest-timeout's signal, Ctrl-C: it keeps hanging.
            with contextlib.suppress(BaseException):
                time.sleep(1)


# -- helpers ------------------------------------------------------------------


def certify(
    tmp_path: Path, target: str, *args: str, bound: float
) -> tuple[int, dict[str, Any], str]:
    """Run the command; return (exit status, its JSON, its output)."""
    # The run's own temporary files go here, to check none is left. A short
    # path: a fork server's socket lives under TMPDIR, and a unix socket's
    # path holds at most 107 bytes (pytest's tmp_path is longer than that
    # allows once multiprocessing adds its own folder).
    tmpdir = Path(tempfile.mkdtemp(prefix="cert-", dir="/tmp"))
    try:
        return _certify(tmp_path, tmpdir, target, *args, bound=bound)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _certify(
    tmp_path: Path, tmpdir: Path, target: str, *args: str, bound: float
) -> tuple[int, dict[str, Any], str]:
    out = tmp_path / "card.json"
    mark = uuid.uuid4().hex
    env = {
        **os.environ,
        MARK: mark,
        "TMPDIR": str(tmpdir),
        "PYTHONPATH": os.pathsep.join(
            [
                str(HERE),
                *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
            ]
        ),
    }
    cmd = [sys.executable, "-m", "executors.testing", "certify", target]
    proc = subprocess.run(
        [*cmd, *args, "--json", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=bound,
        check=False,
    )
    survivors = _marked(mark)
    for p in survivors:
        p.kill()
    assert not survivors, f"processes of the run outlived it: {survivors}"
    left = sorted(p.name for p in tmpdir.iterdir())
    assert not left, f"the run left temporary files: {left}"
    assert out.exists(), proc.stdout + proc.stderr
    return proc.returncode, json.loads(out.read_text()), proc.stdout + proc.stderr


def _marked(mark: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def outcomes(card: dict[str, Any]) -> dict[str, str]:
    """``{test name with parameters: outcome}``."""
    return {t["id"].rpartition("::")[2]: t["outcome"] for t in card["tests"]}


def bad_rows(card: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (t["topic"], t["id"].rpartition("::")[2])
        for t in card["tests"]
        if t["outcome"] in ("failed", "hung")
    }


def page_bad_rows(column: str) -> set[tuple[str, str]]:
    """The (topic, test) rows docs/peers.md marks FAIL or HUNG in ``column``."""
    rows: set[tuple[str, str]] = set()
    topic = ""
    index = None
    for line in PAGE.read_text().splitlines():
        if line.startswith("## "):
            topic, index = line[3:].strip(), None
        elif line.startswith("| test |"):
            headers = [h.strip() for h in line.strip("|").split("|")]
            index = headers.index(column) if column in headers else None
        elif index is not None and line.startswith("| <span"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            name = re.search(r"`([^`]*)`", cells[0])
            assert name, line
            if cells[index] in ("**FAIL**", "**HUNG**"):
                rows.add((topic, name.group(1).replace("\\|", "|")))
    return rows


# -- the tests ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_thread_backend_by_name_passes(tmp_path: Path) -> None:
    code, card, output = certify(tmp_path, "thread", bound=840)
    assert card["ours"], output
    assert card["capabilities"]["process_isolation"][1] == "declared by the executor"
    bad = bad_rows(card)
    assert not bad, output
    assert code == 0, output
    assert "PASSED" in output


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_stdlib_thread_pool_fails_exactly_the_rows_the_page_shows(
    tmp_path: Path,
) -> None:
    published = page_bad_rows("stdlib thread")
    assert published, "docs/peers.md shows no failure for the stdlib thread pool"
    code, card, output = certify(
        tmp_path,
        "concurrent.futures:ThreadPoolExecutor",
        "--label",
        "stdlib thread",
        bound=840,
    )
    assert not card["ours"]
    # Probed, not assumed: a thread pool runs tasks in the caller's process.
    assert card["capabilities"]["process_isolation"][0] is False
    assert card["capabilities"]["process_isolation"][1].startswith("probed")
    assert bad_rows(card) == published, output
    assert code == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_map_that_waits_for_every_result_fails_the_map_rows(
    tmp_path: Path,
) -> None:
    code, card, output = certify(
        tmp_path,
        "test_certify:EagerMapExecutor",
        "--topic",
        "map",
        "--topic",
        "ordering",
        bound=540,
    )
    assert code == 1, output
    got = outcomes(card)
    # The map raises at the call, before the caller can iterate: the items
    # before a failure never arrive, and the deadline cannot be observed.
    for name in (
        "test_failure_raises_at_its_position[None]",
        "test_failure_raises_at_its_position[1]",
        "test_timeout_counts_from_the_call",
    ):
        assert got[name] == "failed", output
    # What an eager map still gets right is not blamed on it.
    assert got["test_long_map_with_automatic_chunks"] == "passed", output
    assert got["test_lambda_in_map"] == "passed", output
    assert {t["topic"] for t in card["tests"]} == {"map", "ordering"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_executor_that_hangs_on_shutdown_is_reported_hung_and_killed(
    tmp_path: Path,
) -> None:
    start = time.monotonic()
    code, card, output = certify(
        tmp_path,
        "test_certify:HangingShutdownExecutor",
        "--topic",
        "Ctrl-C",
        "--topic",
        "references",
        "--timeout",
        "5",
        bound=540,
    )
    took = time.monotonic() - start
    assert code == 1, output
    # Not those that need this library's extensions (max_pending).
    got = {name: o for name, o in outcomes(card).items() if o != "n/a"}
    assert len(got) >= 2, output
    assert got, output
    # Every test shuts its executor down (at teardown, or leaving `with`):
    # each one hangs, is killed, and the run goes on with the next.
    assert set(got.values()) == {"hung"}, output
    assert "test_ctrl_c_in_a_with_block_stops_the_work" in got
    # Each hang costs its timeout, the grace before the kill and a new
    # test process; nothing waits longer.
    assert took < 60 * len(got), f"{took:.0f}s for {len(got)} hung tests"


@pytest.mark.slow
def test_one_topic_of_the_inline_backend_passes_quickly(tmp_path: Path) -> None:
    code, card, output = certify(tmp_path, "inline", "--topic", "submit", bound=240)
    assert code == 0, output
    assert {t["topic"] for t in card["tests"]} == {"submit"}
    assert outcomes(card)["test_returns_a_stdlib_future_with_the_result"] == "passed"
    # Declared by the backend: inline runs each task inside submit().
    assert card["capabilities"]["runs_concurrently"] == [
        False,
        "declared by the executor",
    ]
    assert "ok   submit" in output


def test_a_target_that_cannot_be_created_is_an_error_not_a_pass(
    tmp_path: Path,
) -> None:
    code, card, output = certify(
        tmp_path, "concurrent.futures:no_such_executor", bound=240
    )
    assert code == 1, output
    assert "no_such_executor" in card["error"], output
    assert card["tests"] == []


def _heading_ids(text: str) -> set[str]:
    ids = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            ids.add(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", title)))
    return ids


def test_every_link_of_the_readme_to_the_peers_page_names_a_measured_row() -> None:
    page = PAGE.read_text()
    ids = set(re.findall(r'id="([^"]+)"', page)) | _heading_ids(page)
    readme = (HERE.parent / "README.md").read_text()
    links = re.findall(r"docs/peers\.md#([\w-]+)", readme)
    assert links, "the README links to no row of docs/peers.md"
    missing = sorted(set(links) - ids)
    assert not missing, f"README links to rows docs/peers.md does not have: {missing}"


class ExitingExecutor(futures.ThreadPoolExecutor):
    """A thread pool whose ``submit`` ends the calling process."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        os._exit(7)


@pytest.mark.slow
def test_a_target_that_kills_the_test_process_fails_that_test(
    tmp_path: Path,
) -> None:
    # The probe would run tasks: the flags say what it would have found.
    code, card, output = certify(
        tmp_path,
        "test_certify:ExitingExecutor",
        "--topic",
        "Ctrl-C",
        "--runs-concurrently",
        "--no-process-isolation",
        bound=240,
    )
    assert code == 1, output
    assert card["capabilities"]["process_isolation"] == [
        False,
        "given: --no-process-isolation",
    ]
    # The topic's other tests need this library's extensions (max_pending).
    (test,) = [t for t in card["tests"] if t["outcome"] != "n/a"]
    assert test["outcome"] == "failed", output
    assert "the test process died during this test (exit code 7)" in test["reason"]


@pytest.mark.slow
def test_executors_create_is_given_its_backend_by_position(tmp_path: Path) -> None:
    # create()'s backend is positional-only; --kwargs names every argument.
    code, card, output = certify(
        tmp_path,
        "executors:create",
        "--kwargs",
        '{"backend": "thread"}',
        "--topic",
        "submit",
        bound=240,
    )
    assert code == 0, output
    assert card["ours"]
    assert card["executor_type"].endswith("ThreadExecutor"), card["executor_type"]
