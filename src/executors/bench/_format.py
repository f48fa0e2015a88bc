"""How a figure is summarised and written: medians, ranges, rounding.

Every figure is a median over repeats, shown with its range (min-max, or the
10th-90th percentiles once there are ten samples or more, so one stray
garbage collection does not set the range).
"""

from __future__ import annotations

import statistics

__all__ = ["fmt", "fmt_ratio", "summarize"]

_RATES = ("tasks/s", "items/s")


def summarize(samples: list[float]) -> dict[str, float] | None:
    """Median, range and count of ``samples`` (None when there are none)."""
    if not samples:
        return None
    ordered = sorted(samples)
    n = len(ordered)
    if n >= 10:
        lo = ordered[int(0.1 * (n - 1))]
        hi = ordered[round(0.9 * (n - 1))]
    else:
        lo, hi = ordered[0], ordered[-1]
    return {"median": statistics.median(ordered), "lo": lo, "hi": hi, "n": float(n)}


def fmt(value: float, unit: str) -> str:
    """A figure with about three significant digits."""
    if unit in _RATES:
        if abs(value) >= 1e6:
            return f"{value / 1e6:.2f}M"
        if abs(value) >= 1e4:
            return f"{value / 1e3:.0f}k"
        if abs(value) >= 1e3:
            return f"{value / 1e3:.1f}k"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(value: float) -> str:
    """A ratio, as ``1.23x``."""
    if value >= 100:
        return f"{value:,.0f}x"
    if value >= 10:
        return f"{value:.1f}x"
    if value >= 0.1:
        return f"{value:.2f}x"
    return f"{value:.2g}x"
