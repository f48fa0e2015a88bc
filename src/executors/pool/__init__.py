"""``executors.Pool``: the ``multiprocessing.Pool`` API, on every backend.

A program written for ``multiprocessing.Pool`` changes one import and runs
on any backend, with the project's contract: a worker that dies fails its
task with a :class:`~concurrent.futures.BrokenExecutor` instead of leaving
``map`` waiting forever (CPython gh-66587, gh-96062)::

    from executors import Pool          # was: from multiprocessing import Pool

    with Pool(4, backend="queue") as pool:
        print(pool.map(abs, [-1, -2, -3]))

The pool is a thin layer over the public :class:`executors.Executor` API:

```
Pool.apply, map  ──▶ executor.submit / executor.map, waited for in the caller
Pool.apply_async ──▶ executor.submit ──▶ Future ──done callback──▶ AsyncResult
Pool.map_async   ──▶ executor.map (every chunk submitted at the call)
                        └─▶ done callbacks: once the map cannot block,
                            its list ──▶ AsyncResult (no thread per call)
Pool.imap        ──▶ executor.map(buffersize=...) ──▶ IMapIterator (lazy, bounded)
Pool.terminate   ──▶ stop running tasks, cancel queued ones, no process left
```

One module per role:

```
_pool.py        Pool: the stdlib's methods and states, driving one executor
_results.py     AsyncResult; a future's outcome as the stdlib's Pool gives it
_unfinished.py  the results not ready yet: filled by callbacks; what join() waits for
_imap.py        IMapIterator, over the executor's lazy map
_starred.py     starmap's fn(*args), the only part a worker unpickles
```

Each name is imported on first use, so that a worker that unpickles a
``starmap`` task loads ``_starred`` alone, none of the caller's machinery.

Where it differs from the stdlib, it is stronger, and
``docs/coming-from-pool.md`` lists each case.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._imap import IMapIterator
    from ._pool import CLOSE as CLOSE
    from ._pool import IMAP_CHUNKS_PER_WORKER as IMAP_CHUNKS_PER_WORKER
    from ._pool import RUN as RUN
    from ._pool import TERMINATE as TERMINATE
    from ._pool import Pool
    from ._results import AsyncResult
    from ._results import MaybeEncodingError as MaybeEncodingError
    from ._unfinished import ENGINE_COLLECTORS as ENGINE_COLLECTORS

__all__ = ["AsyncResult", "IMapIterator", "Pool"]

# Where each name lives: the public ones, and the constants and the stdlib
# error that ``executors.pool`` has always offered.
_HOMES = {
    "AsyncResult": "._results",
    "CLOSE": "._pool",
    "ENGINE_COLLECTORS": "._unfinished",
    "IMAP_CHUNKS_PER_WORKER": "._pool",
    "IMapIterator": "._imap",
    "MaybeEncodingError": "._results",
    "Pool": "._pool",
    "RUN": "._pool",
    "TERMINATE": "._pool",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
