"""Ctrl-C in the middle of a ``map`` leaves no worker behind, on every backend.

A real program (tests/_fault_scripts/sigint_map.py) runs a long map; SIGINT
goes to that parent process only, as ``os.kill(pid, SIGINT)``, so workers
learn of it only through the library. The parent must get
``KeyboardInterrupt`` and exit, and no process it started may be alive five
seconds after the signal.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from _fault_scripts import Script, alive, options_json
from conftest import DEFAULT_TEST_OPTIONS, TEST_OPTIONS, backend_factory
from executors.testing import BOUND

#: Seconds after SIGINT by which every descendant must be gone.
ORPHAN_BOUND = 5.0
#: Starting a backend (a Dask cluster, say) before the map runs.
START_BOUND = 120.0


@pytest.mark.parametrize("mode", ["with", "bare"])
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
        while alive(tree) and time.monotonic() < sent + ORPHAN_BOUND:
            time.sleep(0.05)
        left = alive(tree)
        assert not left, (
            f"{len(left)} processes still alive {ORPHAN_BOUND:.0f}s after SIGINT: "
            f"{[(p.pid, p.name()) for p in left]}\n{script.report()}"
        )
    finally:
        script.kill_tree()
