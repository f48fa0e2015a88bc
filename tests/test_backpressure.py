"""``create(max_pending=N)`` on every backend (see executors.testing.backpressure).

Celery runs the same class in its shared-deployment module (see
``SHARED_DEPLOYMENT_SUITES`` in conftest.py).
"""

from __future__ import annotations

from executors.testing.backpressure import BackpressureContract


class TestBackpressure(BackpressureContract):
    pass
