"""Checks that ``test_shm.py`` and ``test_queue_shm.py`` run on each backend
whose workers send large buffers through shared memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from _programs import run_python
from _shm_tasks import count_memfds, describe, make, negate_in_place, same

TESTS = Path(__file__).parent
MB = 1 << 20
# Bound for processes to be gone after their caller was killed.
GONE_BOUND = 15.0


def check_each_sides_own(ex: Any) -> None:
    """An argument sent and a result received are each side's own copy."""
    array = np.arange(4 * MB // 8, dtype=np.float64)
    for _ in range(3):
        back = ex.submit(negate_in_place, array).result(timeout=60)
        # The worker's mutation stayed in the worker; the result is ours.
        assert array[1] == 1.0
        assert back[1] == -1.0 and back.flags.writeable
        back[1] = 5.0
        assert array[1] == 1.0
        del back
    assert ex.submit(describe, array).result(timeout=60) == (True, float(array.sum()))


def check_map_carries_large_buffers(ex: Any, **map_options: Any) -> None:
    arrays = [np.full(2 * MB // 8, float(i)) for i in range(6)]
    results = list(ex.map(same, arrays, timeout=120, **map_options))
    for i, result in enumerate(results):
        assert (result == float(i)).all() and result.flags.writeable
    del results


def check_a_large_result_from_a_small_call(ex: Any) -> np.ndarray:
    """A small call's 8 MB result arrives whole; it is returned to be dropped."""
    result = ex.submit(make, 8 * MB, 3.0).result(timeout=60)
    assert result.shape == (MB,) and (result == 3.0).all()
    return result


def write_caller(path: Path, main: str) -> Path:
    """Write a caller program to ``path``: ``main`` runs under ``if __name__
    == "__main__":``, with ``sys``, ``numpy as np``, ``executors`` and the
    tasks of ``_shm_tasks`` imported."""
    header = (
        "import sys\n"
        "import numpy as np\n"
        "import executors\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from _shm_tasks import memfds, same\n\n"
        'if __name__ == "__main__":\n'
    )
    path.write_text(header + textwrap.indent(textwrap.dedent(main), "    "))
    return path


def run_caller(path: Path, main: str) -> subprocess.CompletedProcess[str]:
    """Write the caller program of :func:`write_caller` and run it to its
    end; check that it exits with 0. What it wrote."""
    done = run_python(str(write_caller(path, main)), timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def stop_a_caller_mid_transfer(
    folder: Path, sig: signal.Signals, backend: str, **options: Any
) -> str:
    """Run a caller that prints ``ready`` then maps large arrays on
    ``backend`` for ever; stop it with ``sig`` mid-transfer; check that every
    process of its tree is gone with its segments. Its stderr."""
    script = write_caller(
        folder / "caller.py",
        f"""
        array = np.ones(16 << 17)
        with executors.create({backend!r}, max_workers=2, **{options!r}) as ex:
            ex.submit(same, array).result()
            print("ready", flush=True)
            while True:
                for back in ex.map(same, [array] * 4):
                    assert back[0] == 1.0
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.communicate(timeout=30)
        time.sleep(0.5)  # in the middle of the map's transfers
        tree = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(True)]
        held = sum(count_memfds(pid) for pid in tree)
        assert held > 0, "the transfers did not go through shared memory"
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + GONE_BOUND
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in tree):
        time.sleep(0.1)
    # A segment has no name: gone with the last process that held it.
    alive = [p for p in tree if psutil.pid_exists(p) and count_memfds(p)]
    assert not alive, f"processes still hold segments: {alive}"
    return err
