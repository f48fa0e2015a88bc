"""Interpreter exit: pending work completes, and a late submit is refused.

Both run a real program (tests/_fault_scripts/) to its natural end, with no
call to ``shutdown()``, on every backend.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _fault_scripts import Script, options_json
from conftest import DEFAULT_TEST_OPTIONS, TEST_OPTIONS, backend_factory

# A fresh interpreter and its workers per case, a second or more apiece.
pytestmark = pytest.mark.slow

#: A program that starts a backend, runs briefly and exits.
RUN_BOUND = 120.0
TASKS = 6


def _options(backend_name: str) -> str:
    backend_factory(backend_name)  # skips an unavailable backend
    return options_json(TEST_OPTIONS.get(backend_name, DEFAULT_TEST_OPTIONS))


def test_exit_with_pending_futures_completes_the_work(
    backend_name: str, tmp_path: Path
) -> None:
    options = _options(backend_name)
    script = Script(
        "exit_with_pending.py", backend_name, options, str(tmp_path), str(TASKS)
    )
    try:
        code = script.finish(RUN_BOUND)
        assert code is not None, f"the program did not exit\n{script.report()}"
        done = sorted(p.name for p in tmp_path.glob("task-*"))
        assert len(done) == TASKS, (
            f"{TASKS - len(done)} of {TASKS} pending tasks never ran to their end "
            f"(exit code {code})\n{script.report()}"
        )
        assert code == 0, f"exit code {code}\n{script.report()}"
        assert script.stderr == "", f"the program wrote to stderr\n{script.report()}"
    finally:
        script.kill_tree()


def test_submit_from_an_atexit_hook_raises_runtime_error(backend_name: str) -> None:
    options = _options(backend_name)
    script = Script("submit_at_exit.py", backend_name, options)
    try:
        code = script.finish(RUN_BOUND)
        assert code is not None, f"the program did not exit\n{script.report()}"
        assert "READY" in script.stdout, f"the program failed\n{script.report()}"
        assert (
            "RuntimeError: cannot schedule new futures after interpreter shutdown"
            in script.stdout
        ), f"the late submit was not refused\n{script.report()}"
        assert code == 0, f"exit code {code}\n{script.report()}"
        assert script.stderr == "", f"the program wrote to stderr\n{script.report()}"
    finally:
        script.kill_tree()
