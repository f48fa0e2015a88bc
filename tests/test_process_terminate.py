"""terminate_workers() on the process backend while the stdlib replaces workers.

With max_tasks_per_child, the stdlib's manager thread starts a replacement
worker whenever one retires. A replacement started after terminate_workers()
sent its signal was never signalled; it then waited for the call queue,
whose lock a terminated worker may have held, and the manager thread waited
for it forever: terminate_workers() hung in about one run of three.
"""

from __future__ import annotations

import threading

import pytest

import executors
from executors.testing import tasks

pytestmark = pytest.mark.timeout(120)

ROUNDS = 8
BOUND = 15.0


@pytest.mark.slow
@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
def test_ending_the_workers_while_they_are_replaced_returns(how: str) -> None:
    for _ in range(ROUNDS):
        ex = executors.create("process", max_workers=2, max_tasks_per_child=1)
        futures = [ex.submit(tasks.sleep_then_pid, 0.05) for _ in range(4)]
        assert len({f.result(timeout=BOUND) for f in futures}) == 4
        ending = threading.Thread(target=getattr(ex, how), daemon=True)
        ending.start()
        ending.join(BOUND)
        assert not ending.is_alive(), f"{how}() did not return in {BOUND} s"
