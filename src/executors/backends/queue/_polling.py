"""Polling before sleeping: :class:`PollPolicy`, for the manager and the workers.

Imported by the worker processes too: it holds nothing of the caller's side.
See docs/backends/queue.md, "Inside: threads, locks and worker processes".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

from ..._options import cpu_count

__all__ = [
    "CROWDED_CHECK_SECONDS",
    "MAX_POLL_BACKOFF_SECONDS",
    "POLL_BACKOFF_SECONDS",
    "POLL_SECONDS",
    "PollPolicy",
    "cpu_wait_seconds",
    "poll_for",
]

# How long a thread polls before it sleeps, while most of its recent waits
# ended sooner: a thread woken from sleep starts 20-40 µs later on a virtual
# machine, a third of a round trip.
POLL_SECONDS = 200e-6
# While it polls, a thread looks this often at how long it was kept from a CPU
# (see cpu_wait_seconds): under 1% of the time alone on an idle machine, about
# 30% beside a CPU-bound program. Over a tenth twice in a row (once may be a
# burst: workers starting, a pause of the host), the CPU it takes is wanted: it
# polls no more for POLL_BACKOFF_SECONDS, then looks again; each time again
# in a row for twice as long, up to MAX_POLL_BACKOFF_SECONDS: beside a
# CPU-bound program it polls a few percent of the time, and after it has gone
# it polls again within that.
CROWDED_CHECK_SECONDS = 0.1
POLL_BACKOFF_SECONDS = 1.0
MAX_POLL_BACKOFF_SECONDS = 8.0
T = TypeVar("T")
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class PollPolicy:
    """Whether the thread that owns it polls before its next sleep.

    It polls (for ``seconds``) while most of its recent waits ended within
    that time, the machine has a CPU besides this thread's, and its thread
    is not kept from a CPU (:func:`cpu_wait_seconds`). One per thread that
    waits: the state is the thread's own.
    """

    __slots__ = (
        "backoff",
        "checked_at",
        "cpus",
        "crowded_until",
        "polled_seconds",
        "polled_then",
        "seconds",
        "short_waits",
        "waited_for_cpu",
        "was_crowded",
    )

    def __init__(self) -> None:
        self.seconds = POLL_SECONDS
        self.cpus = cpu_count()
        # The share of its recent waits that ended within ``seconds``.
        self.short_waits = 0.0
        # Polling stopped until then; when it last looked (0: not yet), and
        # how long its thread had waited for a CPU then.
        self.crowded_until = self.checked_at = 0.0
        self.waited_for_cpu = 0.0
        self.was_crowded = False  # at the last look
        self.backoff = POLL_BACKOFF_SECONDS  # the next one
        # Seconds spent polling in all, and at the last look.
        self.polled_seconds = self.polled_then = 0.0

    def waited(self, seconds: float, polled: float) -> None:
        """Count one wait that took ``seconds``, polling for up to ``polled`` first."""
        # A moving average over the last few waits: one long wait (the
        # machine paused this process) stops no polling.
        short = seconds <= self.seconds
        self.short_waits += (short - self.short_waits) * 0.25
        self.polled_seconds += min(seconds, polled)

    def waits_are_short(self) -> bool:
        """Most recent waits were short, and a CPU besides this thread's exists.

        On one CPU, polling would take it from the thread being waited for.
        No system call: checked before anything dearer.
        """
        return self.short_waits >= 0.5 and self.cpus >= 2

    def worth_polling(self) -> bool:
        """Whether to poll before the next sleep (at most one /proc read)."""
        return self.waits_are_short() and not self._crowded()

    def _crowded(self) -> bool:
        """Whether this thread waited for a CPU lately (CROWDED_CHECK_SECONDS)."""
        now = time.monotonic()
        if now < self.crowded_until:
            return True
        checked_at = self.checked_at
        if checked_at and now < checked_at + CROWDED_CHECK_SECONDS:
            return False
        waited = cpu_wait_seconds()
        if waited is None:
            self.crowded_until = float("inf")  # cannot tell: never poll
            return True
        # Judged only over a recent stretch in which it polled for a tenth
        # of the time: else the wait is the pool's own work (a map keeps
        # every CPU busy, and its workers' pipes are never empty), or a look
        # long ago. Such a look is a first one.
        since = now - checked_at
        judged = (
            0.0 < since <= 2 * CROWDED_CHECK_SECONDS
            and self.polled_seconds - self.polled_then >= since / 10
        )
        wanted = judged and waited - self.waited_for_cpu > since / 10
        # After a back-off, once is enough until a stretch finds the CPU
        # free again: it was wanted before.
        again = self.backoff > POLL_BACKOFF_SECONDS
        crowded, self.was_crowded = wanted and (self.was_crowded or again), wanted
        if judged and not wanted:
            self.backoff = POLL_BACKOFF_SECONDS
        if crowded:
            # Judged afresh once the back-off is over.
            self.crowded_until, self.checked_at = now + self.backoff, 0.0
            self.backoff = min(2 * self.backoff, MAX_POLL_BACKOFF_SECONDS)
            self.was_crowded = False
        else:
            self.checked_at, self.waited_for_cpu = now, waited
            self.polled_then = self.polled_seconds
        return crowded


def poll_for(ready: Callable[[float], T], seconds: float) -> T:
    """Call ``ready(0)`` until it returns something true or ``seconds`` pass.

    ``ready`` is a ``poll`` method: each zero-timeout call frees the GIL.
    Returns what the last call returned.
    """
    monotonic = time.monotonic
    until = monotonic() + seconds
    events = ready(0)
    while not events and monotonic() < until:
        events = ready(0)
    return events


def cpu_wait_seconds() -> float | None:
    """Seconds the calling thread has been kept from a CPU so far (Linux), or None.

    The time it waited, runnable, for one (``/proc/thread-self/schedstat``),
    plus its share of the time a hypervisor took the machine's CPUs away
    (steal, ``/proc/stat``): a thread that polls there burns CPU the host
    takes from the others.
    """
    try:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        try:
            waited = int(os.read(fd, 128).split()[1]) / 1e9
        finally:
            os.close(fd)
        fd = os.open("/proc/stat", os.O_RDONLY)
        try:
            # "cpu  user nice system idle iowait irq softirq steal ...", in ticks.
            steal = int(os.read(fd, 256).split(b"\n", 1)[0].split()[8])
        finally:
            os.close(fd)
    except (OSError, IndexError, ValueError):
        return None
    return waited + steal / _TICKS_PER_SECOND / (os.cpu_count() or 1)
