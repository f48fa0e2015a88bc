"""Creating and shutting down executors leaks no fd, thread or process."""

from __future__ import annotations

from executors.testing import LeakContract


class TestLeaks(LeakContract):
    pass
