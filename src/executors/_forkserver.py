"""Have the fork server import a backend's worker modules before it forks.

Under the ``forkserver`` start method every worker is forked from one
server process, which by default has imported only ``__main__``: each
worker then imports this package and its backend itself, about 100 ms on a
quiet machine and most of a second on a loaded one. A worker forked from a
server that has imported them starts in milliseconds. That decides how fast
a crashed or recycled worker is replaced: a pool with
``max_tasks_per_child=25`` replaces a worker every 25 tasks, and its
replacement must be ready before the worker it replaces leaves.

The list can only be set before the server starts, and the server is one
per caller process, whichever backend starts it: so every backend asks for
the modules of every process backend here (:data:`WORKER_MODULES`), not
only its own, and those the caller has imported are preloaded. Only those:
a module the server fails to import with anything but ``ImportError``
ends the server, and every pool of the caller with it; one the caller has
imported imports in the server too.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from multiprocessing.context import BaseContext

__all__ = ["WORKER_MODULES", "preload_in_forkserver"]

#: What the workers of this package's process backends import to run:
#: their start-up, their worker loops and what unpickling a call needs.
#: Preloaded only once the caller has imported them (see above).
WORKER_MODULES = (
    "executors.backends.process",
    "executors.backends.mp_pool",
    "executors.backends.queue._worker",
)

#: What every worker imports after the fork otherwise, whatever the caller
#: has imported: running the caller's main module (``runpy``), its own
#: process object, functions pickled by value, locks, shared memory. The
#: standard library and a dependency: always importable.
_ALWAYS = (
    "cloudpickle",
    "multiprocessing.popen_forkserver",
    "multiprocessing.shared_memory",
    "multiprocessing.sharedctypes",
    "multiprocessing.synchronize",
    "pkgutil",
    "runpy",
)


def preload_in_forkserver(
    ctx: BaseContext, modules: Iterable[str] = WORKER_MODULES
) -> None:
    """Add ``modules`` to what the fork server imports before it forks anyone.

    Does nothing unless ``ctx`` is a forkserver context whose server has
    not started yet; the modules already listed (``__main__`` by default)
    stay listed, first. Only the modules the caller has imported are
    added (see the module's docstring); the workers import any other
    themselves, as without a preload.
    """
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    listed = getattr(server, "_preload_modules", None)
    running = getattr(server, "_forkserver_pid", None) is not None
    if running or not isinstance(listed, list):
        return
    wanted = [*_ALWAYS, *(name for name in modules if name in sys.modules)]
    missing = [name for name in wanted if name not in listed]
    if not missing:
        return
    # Private names may change in a later Python: a preload is only speed.
    with contextlib.suppress(Exception):
        ctx.set_forkserver_preload([*listed, *missing])
