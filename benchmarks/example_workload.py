"""An example workload for ``python -m executors.bench --func/--inputs``.

Run from this directory::

    python -m executors.bench --workloads func \
        --func example_workload:work --inputs example_workload:inputs

``work`` is a stand-in for a real task: a few milliseconds of pure Python
per item, the grain at which the choice of backend starts to matter. Replace
it with your own function (any importable module works) to see which
backend runs *your* workload fastest here, and how far each is from the
serial loop.
"""

from __future__ import annotations

ITEMS = 400


def work(n: int) -> int:
    """Count the primes below ``5_000 + n`` by trial division."""
    count = 0
    for candidate in range(2, 5_000 + n):
        divisor = 2
        while divisor * divisor <= candidate:
            if candidate % divisor == 0:
                break
            divisor += 1
        else:
            count += 1
    return count


def inputs() -> range:
    """The items to map over (a callable, so nothing is built at import)."""
    return range(ITEMS)
