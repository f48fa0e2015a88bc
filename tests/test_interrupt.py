"""Ctrl-C in the middle of a ``map`` leaves no worker behind, on every backend.

A real program runs a long map and gets SIGINT. The parent must get
``KeyboardInterrupt`` and exit promptly, and no process it started may be
alive five seconds after the signal. Two programs:

* tests/_fault_scripts/sigint_map.py (``with`` block, or none and a lazy
  map); SIGINT goes to the parent only, as ``os.kill(pid, SIGINT)``, so
  workers learn of it only through the library.
* tests/_fault_scripts/ctrl_c_bare.py, the common script: no ``with``, an
  eager ``list(ex.map(slow, ...))`` of 30 s tasks, the exception unhandled.
  SIGINT goes either to the parent only, or to its whole process group, as
  a terminal sends Ctrl-C to the foreground job (workers get it too).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Literal

import pytest

from _fault_scripts import Script, alive, options_json
from _programs import alive_at
from conftest import BACKENDS, DEFAULT_TEST_OPTIONS, TEST_OPTIONS, backend_factory
from executors.testing import BOUND

#: The backend whose Ctrl-C programs run in the quick run: the default one.
#: Each program costs seconds of a fresh interpreter and its workers, so
#: the other backends' run under ``-m slow``.
QUICK_BACKEND = "process"
SLOW_ELSEWHERE = [
    pytest.param(name, id=name, marks=() if name == QUICK_BACKEND else pytest.mark.slow)
    for name in BACKENDS
]

#: Seconds after SIGINT by which every descendant must be gone.
ORPHAN_BOUND = 5.0
#: Starting a backend (a Dask cluster, say) before the map runs.
START_BOUND = 120.0


@pytest.mark.parametrize("mode", ["with", "bare"])
@pytest.mark.parametrize("backend_name", SLOW_ELSEWHERE)
def test_ctrl_c_in_a_map_leaves_no_orphans(backend_name: str, mode: str) -> None:
    backend_factory(backend_name)  # skips an unavailable backend
    options = TEST_OPTIONS.get(backend_name, DEFAULT_TEST_OPTIONS)
    script = Script("sigint_map.py", backend_name, options_json(options), mode)
    try:
        assert script.wait_for_line("RUNNING", START_BOUND), (
            f"the map never started\n{script.report()}"
        )
        time.sleep(0.3)  # well inside the map: tasks running and queued
        tree = script.descendants()
        os.kill(script.proc.pid, signal.SIGINT)
        sent = time.monotonic()
        code = script.finish(BOUND)
        assert code is not None, (
            f"the parent did not exit within {BOUND:.0f}s of SIGINT "
            f"(children: {[p.pid for p in alive(tree)]})\n{script.report()}"
        )
        assert "KeyboardInterrupt" in script.stdout, (
            f"the parent did not get KeyboardInterrupt (exit code {code})\n"
            f"{script.report()}"
        )
        assert code == 130, f"exit code {code}\n{script.report()}"
        left = alive_at(tree, sent + ORPHAN_BOUND)
        assert not left, (
            f"{len(left)} processes still alive {ORPHAN_BOUND:.0f}s after SIGINT: "
            f"{[(p.pid, p.name()) for p in left]}\n{script.report()}"
        )
    finally:
        script.kill_tree()


#: Seconds from SIGINT to the program's exit: "promptly", not "once the
#: running 30 s tasks have finished".
EXIT_BOUND = 5.0


@pytest.mark.parametrize("target", ["group", "parent"])
@pytest.mark.parametrize("backend_name", SLOW_ELSEWHERE)
def test_ctrl_c_without_with_exits_promptly(
    backend_name: str, target: Literal["group", "parent"]
) -> None:
    backend_factory(backend_name)  # skips an unavailable backend
    options = TEST_OPTIONS.get(backend_name, DEFAULT_TEST_OPTIONS)
    script = Script(
        "ctrl_c_bare.py", backend_name, options_json(options), new_session=True
    )
    try:
        assert script.wait_for_line("READY", START_BOUND), (
            f"the executor never started\n{script.report()}"
        )
        time.sleep(1.0)  # inside the map: tasks running and queued
        tree = script.descendants()
        sent = script.interrupt(target)
        code = script.finish(EXIT_BOUND)
        took = time.monotonic() - sent
        assert code is not None, (
            f"the program did not exit within {EXIT_BOUND:.0f}s of SIGINT "
            f"(children: {[p.pid for p in alive(tree)]})\n{script.report()}"
        )
        assert "KeyboardInterrupt" in script.stderr, (
            f"no KeyboardInterrupt (exit code {code})\n{script.report()}"
        )
        # An unhandled KeyboardInterrupt ends Python by SIGINT, as a shell
        # expects of a program stopped by Ctrl-C.
        assert code == -signal.SIGINT, f"exit code {code}\n{script.report()}"
        left = alive_at(tree, sent + ORPHAN_BOUND)
        assert not left, (
            f"{len(left)} processes still alive {ORPHAN_BOUND:.0f}s after SIGINT "
            f"(the program exited after {took:.1f}s): "
            f"{[(p.pid, p.name()) for p in left]}\n{script.report()}"
        )
    finally:
        script.kill_tree()
