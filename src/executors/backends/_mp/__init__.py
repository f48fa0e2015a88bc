"""A :class:`multiprocessing.pool.Pool` watched, which Pool won't do itself.

Used by ``mp_pool`` and by joblib's ``multiprocessing`` engine, nothing
else: so it lives here, not in the core.

Pool replaces a worker that died and never completes the task it held
(CPython gh-66587, bpo-22393), restarts workers whose initializer fails
forever, and its own ``terminate()`` can block for good once a worker died
holding one of its locks. A backend built on Pool (or on a Pool subclass,
such as joblib's ``MemmappingPool``) closes these holes with these pieces,
one module each::

    pool.WatchedPoolMixin ── every worker Pool creates, replacements too ──┐
                                                                           v
    worker: status.start_pool_worker ── "ready" / "initializer failed" ──▶ StatusPipe
            (exits with the caller)     / "exiting cleanly"                │
                                                                           v
    watch.PoolWatch (a ManagerThread): waits on each worker's sentinel and the pipe
      * a worker that exits any other way, an initializer that fails, or a
        Pool thread that dies: ``on_broken(make_error)``, then dismantle;
      * ``close()`` (the backend's work has drained): Pool.close() and join,
        bounded; ``kill()`` (Ctrl-C): dismantle at once (:mod:`.reaping`).

    taskslots.TaskSlots / run_tracked: stopping one task (Pool cannot lose
    one worker), through ``PoolWatch.stop_call``.

Dismantling never calls ``Pool.terminate()``: it stops the worker handler,
kills and reaps every worker itself, then unblocks Pool's other threads one
by one, within :data:`.reaping.DISMANTLE_SECONDS`.

A worker imports :mod:`.status` and :mod:`.taskslots` only (what it
unpickles: the initializer and ``run_tracked``); neither imports the
caller's side, and this ``__init__`` imports nothing.

These modules read Pool's private parts, the only way to see its workers:
the worker list ``_pool``, the ``Process`` hook through which Pool creates
each worker (``ThreadPool`` overrides it too), its handler threads and
their ``_state``, its queues. They are unchanged from Python 3.8 to 3.13.
"""
