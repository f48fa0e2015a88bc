"""The benchmark suite: every backend and the raw libraries, side by side.

Run it with ``python -m executors.bench`` (or the ``executors-bench``
script); ``--quick`` takes well under a minute. Each workload runs on every
available backend *and* on the library it wraps (``ProcessPoolExecutor``,
``multiprocessing.Pool``, joblib's ``Parallel``, a Dask ``Client``) in the
same run, so every figure comes with its ratio. Each target is measured in
its own subprocess, bounded in time: a hung backend is reported as hung and
its processes are killed.

Layout::

    __main__        the command line
    _config         workload sizes, full and --quick
    _targets        what can be measured here: our backends, the raw
                    libraries, the serial baseline (specs only, no import)
    _sessions       the one small Session interface; our backends' session
    _raw_sessions   the raw libraries' sessions, used as their docs show
    _measure        what every workload shares: Context, Outcome, checks
    _workloads      the table of workloads (and the user's own function)
    _pool_workloads start-up, tiny tasks, round trip, classic, CPU, payload
    _streaming      the lazy map over a generator, and its memory
    _child          the measurement subprocess
    _runner         launches, bounds and cleans up the subprocesses
    _format         medians, ranges and rounding of a figure
    _machine        the machine and the package versions
    _goals          the performance goals: goals.json plus per-backend rules
    _report         ratios, goals met, markdown and JSON
    _plot           the PNG chart
"""

from __future__ import annotations

__all__: list[str] = []
