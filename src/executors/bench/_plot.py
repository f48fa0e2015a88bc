"""A PNG chart of the headline figure of every workload (``--plot``)."""

from __future__ import annotations

import math
from typing import Any

from ._format import summarize
from ._report import Results
from ._workloads import WORKLOADS

__all__ = ["MISSING_MATPLOTLIB", "check_matplotlib", "plot"]

MISSING_MATPLOTLIB = (
    '--plot needs matplotlib, which is not installed: pip install "executors[plot]"'
)

_COLORS = {"ours": "#1f77b4", "raw": "#ff7f0e", "baseline": "#7f7f7f"}


def check_matplotlib() -> None:
    """Fail before any measurement if ``--plot`` cannot be honoured.

    Raises:
        ImportError: naming the ``plot`` extra.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(MISSING_MATPLOTLIB) from exc


def plot(results: Results, path: str) -> None:
    """Draw one horizontal bar chart per workload into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels = []
    for name in results.workloads:
        workload = WORKLOADS[name]
        metric = workload.headline
        bars: list[tuple[str, str, dict[str, float]]] = []
        for run in results.runs:
            record = results.record(run.spec.name, name)
            if record is None or record.get("status") != "ok":
                continue
            summary = summarize(record.get("samples", {}).get(metric.key, []))
            if summary is not None:
                bars.append((run.spec.name, run.spec.kind, summary))
        if bars:
            panels.append((workload, metric, bars))
    if not panels:
        raise ValueError("nothing was measured, so there is nothing to plot")
    columns = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / columns)
    height = max(len(bars) for _, _, bars in panels) * 0.32 + 1.2
    fig, axes = plt.subplots(
        rows, columns, figsize=(7 * columns, height * rows), squeeze=False
    )
    for ax, (workload, metric, bars) in zip(axes.flat, panels, strict=False):
        names = [n for n, _, _ in bars]
        medians = [s["median"] for _, _, s in bars]
        errors: Any = [
            [s["median"] - s["lo"] for _, _, s in bars],
            [s["hi"] - s["median"] for _, _, s in bars],
        ]
        colors = [_COLORS.get(kind, "#333333") for _, kind, _ in bars]
        positions = list(range(len(bars)))
        ax.barh(positions, medians, xerr=errors, color=colors, capsize=2)
        ax.set_yticks(positions)
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        positive = [m for m in medians if m > 0]
        if positive and max(positive) / min(positive) > 50:
            ax.set_xscale("log")
        better = "higher" if metric.higher_is_better else "lower"
        ax.set_xlabel(f"{metric.label} ({metric.unit}, {better} is better)", fontsize=8)
        ax.set_title(workload.title(results.config), fontsize=9, wrap=True)
        ax.tick_params(axis="x", labelsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles = [Patch(color=color) for color in _COLORS.values()]
    fig.legend(
        handles,
        ["executors backend", "raw library", "serial baseline"],
        loc="lower center",
        ncol=3,
        fontsize=8,
    )
    quick = " (--quick: indicative only)" if results.config.quick else ""
    fig.suptitle(
        f"executors benchmark, {results.config.workers} workers{quick}", fontsize=11
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
