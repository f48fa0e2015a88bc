"""The core conformance and fault suites on the oldest and newest Pythons.

Run by .ci/run. No optional extras are installed here: this proves that the
core (inline, thread, process, and the hand-written pools) needs nothing but
the package itself, and that joblib/dask show up as skipped, not as errors.
"""

from __future__ import annotations

import nox

nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = True

CORE_TESTS = [
    "tests/core",
    "tests/test_core.py",
    "tests/test_conformance.py",
    # The crash matrix and the shutdown-deadlock programs: how a pool
    # breaks changes between Python versions (the stdlib's manager thread
    # fails futures under its shutdown lock from 3.12 on), so these run on
    # the oldest and newest Pythons too, not only on the default one.
    "tests/test_faults.py",
    "tests/test_shutdown_deadlock.py",
    "tests/test_backpressure.py",
]


@nox.session(python=["3.10", "3.13"])
def core(session: nox.Session) -> None:
    """Core tests without optional extras."""
    session.install("-e", ".[test]")
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        # As the README's command: the suites are written to run in
        # parallel, and serially these two sessions took a third of CI.
        "-n",
        "4",
        "-k",
        "not joblib and not dask",
        *CORE_TESTS,
        *session.posargs,
    )
