"""The parts of the ``queue`` backend; :mod:`executors.backends.queue` is the entry.

* :mod:`.wire`: the messages between the parent and a worker, and the
  shared-memory board where each worker posts what it is running.
* :mod:`.worker`: the loop a worker process runs.
* :mod:`.items`: the records the parent keeps (work items, worker handles)
  and the errors a task can end with.
* :mod:`.pool`: the state the callers and the manager share, and its
  policy: dispatch, starting and replacing workers, handling deaths.
* :mod:`.manager`: the manager thread, and how other threads wake it.
"""
