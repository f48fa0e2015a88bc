"""What the multi-host callers share: their JSON lines, a map and futures.

``celery_caller.py`` and ``dask_caller.py`` run as scripts, so this module,
beside them, is on their path. Every line a caller prints is a JSON object;
times are ``time.monotonic()``, which the test process shares (one kernel,
one clock).
"""

import json
import os
import sys
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import wait

#: How long a caller waits for its workers, for its results after a
#: quarter of them, and for ``shutdown()``; then it reports what it has.
READY_SECONDS = 120.0
SETTLE_SECONDS = 90.0
SHUTDOWN_SECONDS = 30.0


def emit(event, **fields):
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def run(main):
    """A caller's ``main()``; what it raises is an ``error`` line and exit
    code 1, at once: a client library's threads must not keep it alive."""
    try:
        main()
    except BaseException as exc:
        emit("error", message=repr(exc))
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def shut_down(ex):
    """``ex.shutdown()`` in a thread: how long it took, or None if it hangs."""
    started = time.monotonic()
    closing = threading.Thread(target=ex.shutdown, daemon=True)
    closing.start()
    closing.join(SHUTDOWN_SECONDS)
    return None if closing.is_alive() else time.monotonic() - started


def finish(ex, **fields):
    """Shut ``ex`` down, print ``done`` with how long it took; exit 1 on a hang."""
    took = shut_down(ex)
    emit("done", **fields, shutdown_seconds=took)
    if took is None:
        os._exit(1)  # shutdown() hangs: the test reports it


def map_results(ex, where, n):
    """``ex.map(where)`` over N items; prints ``quarter`` after a quarter.

    Returns ``(arrival time, *result)`` for each result, in order.
    """
    results = []
    for result in ex.map(where, range(n), timeout=SETTLE_SECONDS):
        results.append((time.monotonic(), *result))
        if len(results) == n // 4:
            emit("quarter")
    return results


def run_futures(ex, where, n):
    """N ``submit(where, i)`` calls; prints ``quarter`` once a quarter are
    done, then ``settled`` with a count of how they ended, then ``done``
    with how each future ended and when, and how long ``shutdown()`` took."""
    settled = {}
    quarter = threading.Event()

    def record(i):
        settled[i] = time.monotonic()
        if len(settled) >= n // 4:
            quarter.set()

    futures = []
    for i in range(n):
        future = ex.submit(where, i)
        future.add_done_callback(lambda f, i=i: record(i))
        futures.append(future)
    if quarter.wait(SETTLE_SECONDS):
        emit("quarter")
    wait(futures, timeout=SETTLE_SECONDS)
    # Done-callbacks run on the library's callback thread, a moment later.
    deadline = time.monotonic() + 10
    while len(settled) < sum(f.done() for f in futures):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    outcomes = []
    for i, future in enumerate(futures):
        if not future.done():  # a hang: the test reports it as "pending"
            outcomes.append((i, "pending", None, None))
        elif future.cancelled():
            outcomes.append((i, "cancelled", settled.get(i), None))
        elif future.exception() is None:
            outcomes.append((i, "ok", settled.get(i), future.result()[0]))
        else:
            error = future.exception()
            outcomes.append((i, type(error).__name__, settled.get(i), str(error)))
    emit("settled", counts=Counter(kind for _, kind, _, _ in outcomes))
    finish(ex, outcomes=outcomes)
