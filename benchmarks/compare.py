"""Compare two runs of the benchmark suite, figure by figure.

Usage::

    python benchmarks/compare.py before.json after.json [--threshold 0.10]

Both files come from ``python -m executors.bench --json PATH``. For every
target, workload and figure measured in both, prints the two medians and
their ratio (after / before), marking a change larger than the threshold as
better or worse according to the figure's direction. Meant for checking a
change to a backend against the previous run on the *same* machine; figures
from different machines do not compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# Metrics where a larger figure is better; every other one is a time or a
# memory growth, where smaller is better.
HIGHER_IS_BETTER = {"default", "best", "mb_per_s", "busy", "items_per_s"}


def _medians(path: str) -> tuple[dict[tuple[str, str, str], float], dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    medians = {}
    for result in report["results"]:
        for metric, summary in result.get("summary", {}).items():
            key = (result["target"], result["workload"], metric)
            medians[key] = summary["median"]
    return medians, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Compare two runs of the benchmark suite, figure by figure."
    )
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.10,
        help="relative change reported as better/worse (default: 0.10)",
    )
    args = parser.parse_args(argv)
    before, old = _medians(args.before)
    after, new = _medians(args.after)
    if old.get("machine", {}).get("cpu") != new.get("machine", {}).get("cpu"):
        print("warning: the two runs are from different CPUs", file=sys.stderr)
    if old.get("quick") != new.get("quick"):
        print("warning: one run is --quick and the other is not", file=sys.stderr)
    print("| target | workload | figure | before | after | after/before | |")
    print("|---|---|---|---|---|---|---|")
    worse = 0
    for key in sorted(before.keys() & after.keys()):
        old_value, new_value = before[key], after[key]
        if old_value == 0:
            continue
        ratio = new_value / old_value
        improved = ratio > 1 if key[2] in HIGHER_IS_BETTER else ratio < 1
        verdict = ""
        if abs(ratio - 1) > args.threshold:
            verdict = "better" if improved else "**worse**"
            worse += not improved
        print(
            f"| {key[0]} | {key[1]} | {key[2]} | {old_value:.4g} | "
            f"{new_value:.4g} | {ratio:.2f}x | {verdict} |"
        )
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
