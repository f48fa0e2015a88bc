"""The benchmark suite: every backend and the raw libraries, side by side.

Run it with ``python -m executors.bench`` (or the ``executors-bench``
script); ``--quick`` takes well under a minute. Each workload runs on every
available backend *and* on the library it wraps (``ProcessPoolExecutor``,
``multiprocessing.Pool``, joblib's ``Parallel``, a Dask ``Client``) in the
same run, so every figure comes with its ratio. Each target is measured in
its own subprocess, bounded in time: a hung backend is reported as hung and
its processes are killed.

Layout::

    __main__   the command line
    _config    workload sizes, full and --quick
    _targets   our backends, raw libraries and the serial baseline, behind
               one small Session interface
    _workloads what is measured and how (runs in the subprocess)
    _child     the measurement subprocess
    _runner    launches, bounds and cleans up the subprocesses
    _report    summaries, ratios, goals, markdown and JSON
    _plot      the PNG chart
"""

from __future__ import annotations

__all__: list[str] = []
