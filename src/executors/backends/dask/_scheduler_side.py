"""What the ``dask`` backend leaves on a scheduler it does not own.

Sent by value (``cloudpickle.register_pickle_by_value``), so that a remote
scheduler needs only ``distributed``, not ``executors``: keep this module
free of imports from the package.
"""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

__all__ = ["ForgetWithClient"]


class ForgetWithClient(SchedulerPlugin):
    """Removes a worker plugin from the scheduler when its client goes.

    The initializer's worker plugin stays on a scheduler until removed:
    every worker that joins later would run it. The executor removes it at
    ``shutdown()``; this covers a caller that died first (killed, or no
    ``shutdown()`` before its connection was lost). It removes itself too.

    Args:
        client: The id of the executor's client.
        plugin: The name of the worker plugin to remove.
    """

    def __init__(self, client: str, plugin: str) -> None:
        self.client = client
        self.plugin = plugin
        self.name = f"{plugin}-forget"

    def remove_client(self, scheduler: Any, client: str) -> None:
        if client != self.client:
            return
        # Workers that join from now on no longer get it; those running
        # keep what their initializer did, as they would after shutdown().
        scheduler.worker_plugins.pop(self.plugin, None)
        if self.name in scheduler.plugins:
            scheduler.remove_plugin(name=self.name)
