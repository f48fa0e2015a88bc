"""Plain Celery tasks for the benchmark's ``raw.celery`` target.

The raw target measures Celery used directly, the way its documentation
shows (``task.delay(x).get()``, ``group(...)().get()``), on the same private
deployment the executor starts; its worker imports this module
(``--include``). Each task is one of the benchmark's task functions,
registered under a name of its own.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from ...bench import _tasks

__all__ = ["TASKS"]

#: The benchmark's task function -> the name of its Celery task.
TASKS: dict[Any, str] = {
    _tasks.noop: "executors.bench.noop",
    _tasks.sleep_for: "executors.bench.sleep_for",
    _tasks.burn: "executors.bench.burn",
}

for _function, _name in TASKS.items():
    shared_task(name=_name)(_function)
